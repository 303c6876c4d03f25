"""The long-context agent workload generator: deterministic, valid, within its stated statistics."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from lamps_agent.cli.main import main
from lamps_agent.program import Program
from lamps_agent.workloads.longctx import (
    KINDS,
    MAX_CONTEXT,
    generate_longctx,
    parse_kinds,
    peak_context,
)


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))]


@pytest.fixture(scope="module")
def coding() -> list[Program]:
    return generate_longctx(2000, kinds="coding", seed=3)


def test_same_seed_same_programs_other_seed_other_programs() -> None:
    assert generate_longctx(50, seed=1) == generate_longctx(50, seed=1)
    assert generate_longctx(50, seed=1) != generate_longctx(50, seed=2)


def test_every_kind_and_the_mix_stay_within_128k() -> None:
    for spec in (*KINDS, "mix"):
        for program in generate_longctx(1500, kinds=spec, seed=7):
            assert peak_context(program) <= MAX_CONTEXT
            assert all(s.prompt_tokens + s.output_tokens <= MAX_CONTEXT for s in program.segments)


def test_a_smaller_context_limit_is_respected_and_programs_stay_valid() -> None:
    programs = generate_longctx(300, kinds="coding", seed=0, max_context=16_384)
    assert max(peak_context(p) for p in programs) <= 16_384
    # Program's own checks (context continuity, last turn without a tool) ran on construction.
    assert all(isinstance(p, Program) for p in programs)


def test_coding_agents_match_their_stated_statistics(coding: list[Program]) -> None:
    turns = [len(p.segments) for p in coding]
    peaks = [peak_context(p) for p in coding]
    outputs = [s.output_tokens for p in coding for s in p.segments]
    first = [p.segments[0].prompt_tokens for p in coding]
    shell = [s.tool_duration for p in coding for s in p.segments if s.tool == "shell"]
    tests = [s.tool_duration for p in coding for s in p.segments if s.tool == "run_tests"]
    assert 11 <= statistics.fmean(turns) <= 16  # ~12 tool calls, 13–14 turns
    assert 3_500 <= statistics.fmean(first) <= 4_500  # ~4k system prompt + issue
    assert 200 <= statistics.fmean(outputs) <= 300  # ~250 tokens per turn
    assert 30_000 <= _quantile(peaks, 0.5) <= 50_000  # 4k → 40–60k for a typical program
    assert _quantile(peaks, 0.99) > 100_000  # and a tail towards the 128k limit
    assert 0.25 <= _quantile(shell, 0.5) <= 0.5  # sub-second shell commands
    assert _quantile(tests, 0.5) > 10 * _quantile(shell, 0.5)  # test runs take seconds
    assert _quantile(tests, 0.99) > 30  # ... with a tail to minutes


def test_chat_idle_gaps_and_tool_use_calls_match_their_statistics() -> None:
    chat = generate_longctx(2000, kinds="chat", seed=5)
    gaps = [s.tool_duration for p in chat for s in p.segments if s.tool == "human"]
    assert 6.0 <= _quantile(gaps, 0.5) <= 8.5  # median human idle gap ~7 s
    assert _quantile(gaps, 0.99) > 30  # a tail to minutes
    tool_use = generate_longctx(2000, kinds="tool-use", seed=5)
    calls = [p.num_tool_calls for p in tool_use]
    assert 3.0 <= statistics.fmean(calls) <= 5.0  # ToolBench: ~3.7 calls per instance
    api = [s.tool_duration for p in tool_use for s in p.segments if s.tool == "web_api"]
    assert 0.45 <= _quantile(api, 0.5) <= 0.75


def test_kinds_spec_errors_name_the_valid_kinds() -> None:
    assert parse_kinds("mix") == parse_kinds("")
    assert set(parse_kinds("coding,chat")) == {"coding", "chat"}
    with pytest.raises(ValueError, match="valid: coding, tool-use, chat"):
        parse_kinds("coding,nope")
    with pytest.raises(ValueError, match="n >= 1"):
        generate_longctx(0)


def test_bench_runs_the_long_context_workload_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "bench",
            "--trace",
            "longctx:tool-use",
            "--num-programs",
            "20",
            "--preset",
            "h100-llama3-8b",
            "--qps",
            "0.5",
            "--policies",
            "program,lamps",
            "--no-plots",
            "-q",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "longctx:tool-use: 20 distinct programs" in out and "program" in out
