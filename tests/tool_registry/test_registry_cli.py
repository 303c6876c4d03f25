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
    assert main(["db", "upgrade", "--url", db_url]) == 0
    assert main(["db", "upgrade", "--url", db_url]) == 0
    assert f"revision {HEAD_REVISION}" in capsys.readouterr().out


def test_tools_list_and_stats(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tools", "list", "--url", filled]) == 0
    out = capsys.readouterr().out
    assert "2 registered tools" in out and "web search" in out
    assert main(["tools", "stats", "--url", filled]) == 0
    out = capsys.readouterr().out
    assert "search" in out and "calc" in out and "1.5" in out
    assert main(["tools", "stats", "--tool", "calc", "--url", filled]) == 0
    assert "search" not in capsys.readouterr().out


def test_stats_of_an_unknown_tool_is_an_error(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "stats", "--tool", "nope", "--url", filled]) == 2
    assert "no calls recorded for tool 'nope'" in capsys.readouterr().err


def test_export_csv_and_json(
    filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tools", "export", "--format", "csv", "--url", filled]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_tool = {row["tool"]: row for row in rows}
    assert by_tool["search"]["count"] == "20" and by_tool["calc"]["error_count"] == "1"
    target = tmp_path / "calls.json"
    argv = ["tools", "export", "--format", "json", "--calls", "--output", str(target)]
    assert main([*argv, "--url", filled]) == 0
    calls = json.loads(target.read_text())
    assert len(calls) == 21 and {c["status"] for c in calls} == {"ok", "error"}


def test_unreachable_database_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    assert main(["tools", "list", "--url", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
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
    assert main([*argv, "--url", db_url]) == 0
    records = sorted(jsonl_records(target), key=lambda r: (r.agent, r.step))
    assert [(r.agent, r.step, r.tool, r.output_tokens, r.prompt_text) for r in records] == [
        ("a", 0, "search", 30, "hello"),
        ("a", 1, None, 12, None),
        ("b", 0, None, 7, None),
    ]
    assert records[0].group == records[1].group == "s1" and records[2].group.startswith("turn:")
    assert main(["tools", "export", "--format", "csv", "--turns", "--url", db_url]) == 0
    assert (
        main(["tools", "export", "--format", "csv", "--turns", "--tool", "x", "--url", db_url]) == 2
    )
