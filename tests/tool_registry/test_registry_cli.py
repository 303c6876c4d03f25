"""``lamps-agent db upgrade`` and ``lamps-agent tools list | stats | export``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lamps_agent.cli.main import main
from tool_registry import ToolRegistry
from tool_registry.schema import HEAD_REVISION


@pytest.fixture
def filled(db_url: str, make_registry: Callable[..., ToolRegistry]) -> str:
    with make_registry(db_url) as reg:
        reg.register("search", duration_hint=2.0, api_type="search", description="web search")
        for i in range(20):
            reg.record("search", duration=1.0 + i % 2)
        reg.record("calc", duration=0.001, status="error", error_type="ValueError")
    return db_url


def test_db_upgrade_is_idempotent(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--registry", db_url]) == 0
    assert main(["db", "upgrade", "--registry", db_url]) == 0
    assert f"revision {HEAD_REVISION}" in capsys.readouterr().out


def test_tools_list_and_stats(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tools", "list", "--registry", filled]) == 0
    out = capsys.readouterr().out
    assert "2 registered tools" in out and "web search" in out
    assert main(["tools", "stats", "--registry", filled]) == 0
    out = capsys.readouterr().out
    assert "search" in out and "calc" in out and "1.5" in out
    assert main(["tools", "stats", "--tool", "calc", "--registry", filled]) == 0
    assert "search" not in capsys.readouterr().out


def test_stats_of_an_unknown_tool_is_an_error(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "stats", "--tool", "nope", "--registry", filled]) == 2
    assert "no calls recorded for tool 'nope'" in capsys.readouterr().err


def test_export_csv_and_json(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "export", "--format", "csv", "--registry", filled]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_tool = {row["tool"]: row for row in rows}
    assert by_tool["search"]["count"] == "20" and by_tool["calc"]["error_count"] == "1"
    target = tmp_path / "calls.json"
    argv = ["tools", "export", "--format", "json", "--calls", "--output", str(target)]
    assert main([*argv, "--registry", filled]) == 0
    calls = json.loads(target.read_text())
    assert len(calls) == 21 and {c["status"] for c in calls} == {"ok", "error"}


def test_unreachable_database_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    assert main(["tools", "list", "--registry", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "u:***@127.0.0.1:1/x" in err and "pw@" not in err


def test_export_turns_as_jsonl_feeds_the_predictor(
    db_url: str, make_registry: Callable[..., ToolRegistry], tmp_path: Path
) -> None:
    from lamps_agent.predictors.learned.data import jsonl_records

    with make_registry(db_url) as reg:
        reg.record_turn(
            agent="a",
            step=0,
            output_tokens=30,
            prompt_tokens=100,
            tool="search",
            session_id="s1",
            prompt_text="hello",
        )
        reg.record_turn(agent="a", step=1, output_tokens=12, prompt_tokens=150, session_id="s1")
        reg.record_turn(agent="b", step=0, output_tokens=7, prompt_tokens=9)
    target = tmp_path / "turns.jsonl"
    argv = ["tools", "export", "--format", "jsonl", "--turns", "--output", str(target)]
    assert main([*argv, "--registry", db_url]) == 0
    records = sorted(jsonl_records(target), key=lambda r: (r.agent, r.step))
    assert [(r.agent, r.step, r.tool, r.output_tokens, r.prompt_text) for r in records] == [
        ("a", 0, "search", 30, "hello"),
        ("a", 1, None, 12, None),
        ("b", 0, None, 7, None),
    ]
    assert records[0].group == records[1].group == "s1" and records[2].group.startswith("turn:")
    assert main(["tools", "export", "--format", "csv", "--turns", "--registry", db_url]) == 0
    assert (
        main(["tools", "export", "--format", "csv", "--turns", "--tool", "x", "--registry", db_url])
        == 2
    )


def test_url_is_a_hidden_alias_of_registry(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tools", "list", "--url", filled]) == 0
    assert "2 registered tools" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["tools", "list", "--help"])
    usage = capsys.readouterr().out
    assert "--registry URL" in usage and "--url" not in usage


MARKUP_NAMES = ["[/x]", "[link=https://evil.example]click here[/link]", "[bold red]boom", "a[/]b"]


def test_markup_in_tool_names_is_printed_literally(
    sqlite_url: str, make_registry: Callable[..., ToolRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    with make_registry(sqlite_url) as reg:
        for name in MARKUP_NAMES:
            reg.register(name, api_type="[/api]", description="[link=x]d[/link]")
            reg.record(name, duration=1.0)
    for command in (["tools", "list"], ["tools", "stats"]):
        assert main([*command, "--registry", sqlite_url]) == 0
        out = capsys.readouterr().out
        for name in MARKUP_NAMES:
            assert name in out, (command, name)
    assert "\x1b]8;" not in out  # no terminal hyperlink escape


SECRET_URLS = {
    "slash in the password": ("postgresql://rel:se/cret77@127.0.0.1:1/db", ["se/cret77"]),
    "query password": ("postgresql://rel@127.0.0.1:1/db?password=qs3cret88", ["qs3cret88"]),
    "malformed scheme": ("postgresql:/rel:malform99@127.0.0.1:1/db", ["malform99"]),
    "percent-encoded": ("postgresql://rel:p%40ssw0rd66@127.0.0.1:1/db", ["p%40ssw0rd66", "p@ss"]),
    "@ in the password": ("postgresql://rel:Xq9sec@Zr7ret@127.0.0.1:1/db", ["Xq9sec", "Zr7ret"]),
    "bad port": ("postgresql://rel:hunter55@127.0.0.1:notaport/db", ["hunter55"]),
    "no user": ("postgresql+asyncpg://:onlypw44@127.0.0.1:1/db", ["onlypw44"]),
    "socket host": ("postgresql://rel:sock33et@/db?host=/nonexistent", ["sock33et"]),
}


@pytest.mark.parametrize("case", sorted(SECRET_URLS))
def test_no_password_form_is_ever_printed(
    case: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, secrets = SECRET_URLS[case]
    monkeypatch.setattr("tool_registry.store.CONNECT_TIMEOUT_S", 2.0)
    caplog.set_level("DEBUG")
    for argv in (["db", "upgrade"], ["tools", "list"], ["tools", "export", "--format", "csv"]):
        assert main([*argv, "--registry", url]) == 2
    monkeypatch.setenv("LAMPS_REGISTRY_URL", url)
    assert main(["tools", "stats"]) == 2
    captured = capsys.readouterr()
    printed = captured.out + captured.err + caplog.text
    assert "lamps-agent: error:" in captured.err
    for secret in secrets:
        assert secret not in printed, (case, secret, printed)


def test_an_empty_registry_says_so_in_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "empty.db"
    assert main(["tools", "stats", "--registry", str(db)]) == 0
    out = capsys.readouterr().out
    assert out == f"no tool calls recorded yet in the tool registry at {db} " + (
        "(`lamps-agent examples` records some)\n"
    )
    assert main(["tools", "list", "--registry", str(db)]) == 0
    assert capsys.readouterr().out.startswith(
        f"no tools registered yet in the tool registry at {db}"
    )


def test_registry_accepts_a_plain_file_path(
    tmp_path: Path, make_registry: Callable[..., ToolRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "plain.db"
    with make_registry(f"sqlite:///{db}") as reg:
        reg.record("search", duration=1.5)
    assert main(["tools", "stats", "--registry", str(db)]) == 0
    assert "search" in capsys.readouterr().out


def test_the_default_registry_follows_the_environment_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("LAMPS_REGISTRY_URL", raising=False)
    assert main(["tools", "stats"]) == 0
    assert str(tmp_path / ".lamps-agent" / "registry.db") in capsys.readouterr().out
    monkeypatch.setenv("LAMPS_REGISTRY_URL", str(tmp_path / "env.db"))  # a plain path here too
    assert main(["tools", "stats"]) == 0
    assert f"registry at {tmp_path / 'env.db'} " in capsys.readouterr().out


def test_export_a_trace_of_the_recorded_sessions_that_bench_reads(
    db_url: str,
    make_registry: Callable[..., ToolRegistry],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import time

    from lamps_agent.workloads import load_trace

    with make_registry(db_url) as reg:
        now = time.time()
        reg.record_turn(agent="coder", step=0, output_tokens=20, prompt_tokens=100,
                        tool="search", session_id="s1")  # fmt: skip
        reg.record("search", duration=2.5, session_id="s1", started_at=now + 0.01)
        reg.record_turn(agent="coder", step=1, output_tokens=30, prompt_tokens=150,
                        session_id="s1")  # fmt: skip
        # s2's call was never timed: its tool's median (over every session's calls) stands in
        reg.record_turn(agent="qa", step=0, output_tokens=5, prompt_tokens=40, tool="search",
                        session_id="s2")  # fmt: skip
        reg.record_turn(agent="qa", step=1, output_tokens=8, prompt_tokens=60, session_id="s2")
        reg.record("search", duration=0.5, session_id="other", started_at=now)
        reg.record_turn(agent="qa", step=0, output_tokens=5, session_id="s3")  # no prompt size
        reg.record_turn(agent="qa", step=0, output_tokens=5, prompt_tokens=9)  # no session
    out = tmp_path / "mine.json"
    args = ["tools", "export", "--format", "json", "--trace", "--output", str(out)]
    assert main([*args, "--registry", db_url]) == 0
    err = capsys.readouterr().err
    assert "2 sessions as programs" in err and "1 session without prompt sizes" in err
    assert (
        "1 turn without a session id" in err and "1 tool calls timed by their tool's median" in err
    )
    raw = json.loads(out.read_text())
    assert raw["coder:s1"] == [
        {"prompt_tokens": 100, "completion_tokens": 20, "tool": "search", "api_time": 2.5,
         "api_token_length": 30},
        {"prompt_tokens": 150, "completion_tokens": 30},
    ]  # fmt: skip
    assert raw["qa:s2"][0]["api_time"] == 1.5  # the median of 2.5 and 0.5
    trace = load_trace(out)  # what `bench --trace mine.json` reads
    assert len(trace.programs) == 2
    assert main(["tools", "export", "--format", "csv", "--trace", "--registry", db_url]) == 2
    assert "--format json" in capsys.readouterr().err
