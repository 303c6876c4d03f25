"""The example apps run offline, solve their tasks and print the registry's per-tool statistics."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")
pytest.importorskip("tool_registry")

ROOT = Path(__file__).resolve().parents[2]


def example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import an example app in-process (its folder on the path, as when run as a script)."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    return importlib.import_module(name)


def stats_rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}


def run(args: list[str], tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("name", "expected", "tools"),
    [
        ("math_agent", "solved 20/20", ["calculator"]),
        ("qa_agent", "answered 10/10", ["search"]),
        ("slow_tools_agent", "latencies: INFERCEPT trace x 0.01", ["ask_user", "text_to_speech"]),
    ],
)
def test_example_runs_offline(
    name: str,
    expected: str,
    tools: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = example(name, monkeypatch)
    assert app.main(["--registry", f"sqlite:///{tmp_path}/registry.db"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "last model call's hints: session=" in out
    assert "tool statistics (from the tool registry):" in out
    rows = stats_rows(out)
    for tool in tools:
        assert int(rows[tool][1]) > 0 and rows[tool][2] == "0"  # calls, no errors


def test_slow_tools_failures_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = example("slow_tools_agent", monkeypatch)
    registry = f"sqlite:///{tmp_path}/registry.db"
    assert app.main(["--time-scale", "0.002", "--registry", registry]) == 0
    out = capsys.readouterr().out
    assert stats_rows(out)["generate_image"][1:3] == ["6", "2"]  # two dragon prompts refused
    assert "content filter" in out


@pytest.mark.slow
def test_cli_runs_the_examples(tmp_path: Path) -> None:
    out = run(
        ["-m", "lamps_agent.cli.main", "examples", "--only", "math", "--limit", "2"], tmp_path
    )
    assert "=== math: examples/math_agent.py ===" in out and "solved 2/2" in out


def test_the_examples_record_into_the_default_registry_that_tools_stats_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamps_agent.cli.main import main

    monkeypatch.setenv("HOME", str(tmp_path))  # the default registry: ~/.lamps-agent/registry.db
    monkeypatch.delenv("LAMPS_REGISTRY_URL")
    default = tmp_path / ".lamps-agent" / "registry.db"
    assert example("math_agent", monkeypatch).main(["--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert f"recording tool calls in the tool registry at {default}\n" in out
    assert f"(every call recorded in {default}, this run's and earlier ones; " in out
    assert "`lamps-agent tools stats` shows them)" in out
    assert main(["tools", "stats"]) == 0
    assert "calculator" in capsys.readouterr().out


def test_the_examples_command_says_where_it_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapters.langchain.cli import _where_recorded

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LAMPS_REGISTRY_URL")
    default = tmp_path / ".lamps-agent" / "registry.db"
    assert _where_recorded(None) == (
        f"the tool calls are recorded in {default}: `lamps-agent tools stats` shows them"
    )
    plain = tmp_path / "mine.db"
    assert _where_recorded(str(plain)).endswith(
        f"`lamps-agent tools stats --registry {plain}` shows them"
    )
    secret = _where_recorded("postgresql://u:hunter2@h/db")
    assert "hunter2" not in secret and "--registry URL`" in secret
