"""The main job (``lamps-agent demo``): its sentence is computed from the run, the common load
point is the smallest capacity, and the command runs end to end on a small workload."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from lamps_agent.bench.capacity import Bracket
from lamps_agent.bench.capacity_bound import CapacityBound
from lamps_agent.bench.demo import (
    DemoWorkload,
    LoadPoint,
    PolicyCapacity,
    WorkloadResult,
    best_policy,
    common_load,
    headline,
)
from lamps_agent.cli.main import main

BOUND = CapacityBound(kv_kept=3.0, kv_dropped=10.0, compute=7.0)
W = DemoWorkload(trace="multi-api", preset="a100-gptj6b")


def cap(policy: str, low: float | None, high: float | None) -> PolicyCapacity:
    return PolicyCapacity(policy=policy, bracket=Bracket(low=low, high=high))


def point(policy: str, p99: float) -> LoadPoint:
    return LoadPoint(policy=policy, qps=3.5, stable=True, e2e_mean=60.0, e2e_p99=p99, ttft_mean=0.1)


def result(caps: list[PolicyCapacity], points: Sequence[LoadPoint] = ()) -> WorkloadResult:
    return WorkloadResult(workload=W, label=W.label, bound=BOUND, capacities=tuple(caps),
                          load_qps=common_load(caps), at_load=tuple(points))  # fmt: skip


def test_the_sentence_names_the_best_policy_its_ratio_and_both_p99s() -> None:
    caps = [cap("vllm", 3.5, 3.85), cap("lamps", 4.5, 4.95), cap("program", 5.25, 5.78)]
    r = result(caps, [point("vllm", 540.0), point("lamps", 320.0), point("program", 313.0)])
    assert best_policy(caps) == "program"
    assert r.load_qps == 3.5
    assert headline(r) == (
        "On multi-api on a100-gptj6b, program serves 1.50× the agent programs of stock vLLM "
        "(5.25 vs 3.5 programs/s stable, 75% of the physical bound); at 3.5 programs/s, where "
        "all are stable, its P99 E2E is 313 s against 540 s."
    )


def test_a_difference_inside_the_brackets_is_not_claimed() -> None:
    r = result([cap("vllm", 4.5, 4.95), cap("lamps", 4.75, 5.2)])
    assert "serves as many agent programs as stock vLLM" in headline(r)


def test_a_policy_that_never_failed_up_to_the_bound_is_a_lower_limit() -> None:
    r = result([cap("vllm", 3.5, 3.85), cap("program", 7.0, None)])
    assert "at least 2.00× the agent programs" in headline(r)


def test_stock_vllm_unbeaten_and_unbracketed_are_said_so() -> None:
    assert "no policy served more agent programs than stock vLLM" in headline(
        result([cap("vllm", 4.5, 4.95), cap("lamps", 4.5, 4.95)])
    )
    unbracketed = result([cap("vllm", None, 0.1), cap("lamps", 4.5, 4.95)])
    assert unbracketed.load_qps is None
    assert "could not be bracketed" in headline(
        result([cap("vllm", None, 0.1), cap("lamps", None, 0.1)])
    )


def test_workloads_parse_and_bad_ones_are_named() -> None:
    assert DemoWorkload.parse("longctx:coding@h200-llama3-8b") == DemoWorkload(
        trace="longctx:coding", preset="h200-llama3-8b"
    )
    with pytest.raises(ValueError, match="TRACE@PRESET"):
        DemoWorkload.parse("multi-api")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workloads", "multiapi@a100-gptj6b"], "multiapi"),
        (["--workloads", "multi-api@a1000"], "a1000"),
        (["--policies", "lamps,program"], "include vllm"),
        (["--policies", "vllm,lampz"], "lampz"),
        (["--pool", "0"], "--pool: must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_the_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--workloads", "single-api@a100-gptj6b", "--policies", "vllm,lamps",
                 "--jobs", "2", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    sentence = next(line for line in printed.splitlines() if line.startswith("On single-api"))
    assert sentence.endswith(".")
    assert sentence in (out / "demo.md").read_text()
    assert "of bound" in printed and (out / "capacity.png").stat().st_size > 0


def test_the_search_takes_the_bound_as_beyond_capacity_without_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A policy stable at every rate simulated still stops below the bound: no schedule sustains
    the bound, and a run there is the slowest of a search."""
    from lamps_agent.cli import demo as cli_demo

    simulated: list[float] = []

    def run(setup: object, policy: str, qps: float) -> LoadPoint:
        simulated.append(qps)
        return LoadPoint(policy=policy, qps=qps, stable=True, e2e_mean=1.0, e2e_p99=1.0,
                         ttft_mean=0.1)  # fmt: skip

    monkeypatch.setattr(cli_demo, "_run", run)
    setup = cli_demo.Setup(label="w", config=None, bound=None)  # type: ignore[arg-type]
    bracket, first = cli_demo._capacity(setup, "lamps", 7.0, quiet=True)
    assert simulated and max(simulated) < 7.0
    assert bracket.high == 7.0 and bracket.low == max(simulated)
    assert first.qps == cli_demo.SEARCH_FROM * 7.0
