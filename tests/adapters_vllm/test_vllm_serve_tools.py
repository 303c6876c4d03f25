"""``lamps-agent serve`` sets vLLM up for tool-calling agents: the parser for the model's family,
the tiny test model's template, structured outputs without free whitespace, the user's own flags
first, and one-line errors (before vLLM starts) for a missing folder or a model without tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.vllm.tools.server import (
    STRUCTURED_OUTPUTS,
    ServeError,
    ServeOptions,
    server_command,
    tool_setup,
)
from adapters.vllm.tools.tiny_model import CHAT_TEMPLATE, MARKER
from lamps_agent.cli.main import main

TOOLS_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{% endfor %}"


def model_dir(tmp_path: Path, model_type: str, template: str | None, name: str = "m") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


def flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_the_tiny_model_gets_pythonic_and_a_template_that_keeps_tool_calls(
    tmp_path: Path,
) -> None:
    folder = model_dir(tmp_path, "llama", None)
    (folder / MARKER).write_text("{}")
    opts = ServeOptions(model=str(folder), vllm_args=("--enforce-eager",))
    cmd = server_command(opts, tool_setup(opts))
    assert "--enable-auto-tool-choice" in cmd
    assert flag(cmd, "--tool-call-parser") == "pythonic"
    assert flag(cmd, "--chat-template") == CHAT_TEMPLATE
    assert json.loads(flag(cmd, "--structured-outputs-config") or "") == STRUCTURED_OUTPUTS
    assert cmd[-1] == "--enforce-eager"  # the user's flags come last
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)  # built with today's template
    setup = tool_setup(opts)
    assert setup is not None and setup.parser == "pythonic" and setup.chat_template is None


@pytest.mark.parametrize(
    ("model_type", "name", "parser"),
    [
        ("qwen2", "Qwen2.5-7B-Instruct", "hermes"),
        ("qwen3", "Qwen3-8B", "hermes"),
        ("qwen3_moe", "Qwen3-Coder-30B-A3B-Instruct", "qwen3_xml"),
        ("llama", "Llama-3.1-8B-Instruct", "llama3_json"),
        ("llama", "Hermes-3-Llama-3.1-8B", "hermes"),
        ("llama4", "Llama-4-Scout-17B-16E-Instruct", "llama4_pythonic"),
        ("mistral", "Mistral-7B-Instruct-v0.3", "mistral"),
        ("granite", "granite-3.1-8b-instruct", "granite"),
        ("gpt_oss", "gpt-oss-20b", "openai"),
    ],
)
def test_known_families_get_their_parser(
    tmp_path: Path, model_type: str, name: str, parser: str
) -> None:
    folder = model_dir(tmp_path, model_type, TOOLS_TEMPLATE, name=name)
    setup = tool_setup(ServeOptions(model=str(folder)))
    assert setup is not None and setup.parser == parser and setup.chat_template is None


def test_the_users_flags_win(tmp_path: Path) -> None:
    folder = model_dir(tmp_path, "qwen2", TOOLS_TEMPLATE)
    user = ("--tool-call-parser=llama3_json", "--structured-outputs-config", "{}")
    opts = ServeOptions(model=str(folder), vllm_args=user)
    cmd = server_command(opts, tool_setup(opts))
    assert "--tool-call-parser" not in cmd and cmd.count("--structured-outputs-config") == 1
    assert cmd[-3:] == list(user)
    # a named parser needs no detection: even a model of an unknown family is served
    other = model_dir(tmp_path, "fancy_new_arch", TOOLS_TEMPLATE, name="other")
    setup = tool_setup(ServeOptions(model=str(other), vllm_args=("--tool-call-parser", "x")))
    assert setup is not None and setup.parser is None


def test_models_that_cannot_call_tools_are_refused(tmp_path: Path) -> None:
    plain = model_dir(tmp_path, "llama", "{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(ServeError, match="cannot call tools"):
        tool_setup(ServeOptions(model=str(plain)))
    unknown = model_dir(tmp_path, "fancy_new_arch", TOOLS_TEMPLATE, name="unknown")
    with pytest.raises(ServeError, match="--tool-call-parser"):
        tool_setup(ServeOptions(model=str(unknown)))
    assert tool_setup(ServeOptions(model=str(plain), tools=False)) is None


def test_a_missing_model_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServeError, match="no model folder"):
        tool_setup(ServeOptions(model=str(tmp_path / "absent")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ServeError, match="Hugging Face cache"):
        tool_setup(ServeOptions(model="some-org/some-model", tools=False))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ServeError, match=r"config\.json"):
        tool_setup(ServeOptions(model=str(empty)))


def test_serve_reports_one_line_before_starting_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr("os.execvpe", lambda *a: started.append(a))
    assert main(["serve", "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"lamps-agent: error: no model folder at '{tmp_path / 'absent'}'"
    assert not started
    plain = model_dir(tmp_path, "llama", "{{ messages }}")
    assert main(["serve", "--model", str(plain)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not started


def test_a_users_template_is_not_checked_for_tools(tmp_path: Path) -> None:
    plain = model_dir(tmp_path, "mistral", "{{ messages }}")
    setup = tool_setup(ServeOptions(model=str(plain), vllm_args=("--chat-template", "t.jinja")))
    assert setup is not None and setup.parser == "mistral"
