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
    assert "revision 0001" in capsys.readouterr().out


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
    assert main(["tools", "list", "--url", "postgresql://u:pw@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "u:***@127.0.0.1:1/x" in err and "pw@" not in err
