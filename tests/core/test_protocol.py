"""The steady-state benchmark protocol: the window, warm-up exclusion, the stability flag, the
capacity search and "≈" for differences within the spread."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from rich.table import Table

from lamps_agent.bench.aggregate import (
    APPROX,
    BASE_UNSTABLE,
    UNSTABLE,
    Row,
    Spread,
    baseline_rows,
    difference,
    group,
    stability_notes,
)
from lamps_agent.bench.bound import ContentionFreeBound, alone_latency
from lamps_agent.bench.capacity import search
from lamps_agent.bench.plots import UNSTABLE_LABEL, plot_latency_vs_qps
from lamps_agent.bench.protocol import Window, default_window, judge_stability
from lamps_agent.bench.report import Baseline
from lamps_agent.bench.runner import BenchConfig, RunSpec, arrivals_for, measure, run_one
from lamps_agent.bench.tables import rows_table
from lamps_agent.cli.main import main
from lamps_agent.metrics import EngineCounters, RequestMetrics, RunLabels, RunSummary, summarize
from lamps_agent.presets import Preset
from lamps_agent.workloads import generate_programs
from tests.core.conftest import make_program


def request(i: int, arrival: float, engine: float, tool: float = 1.0) -> RequestMetrics:
    return RequestMetrics(
        request_id=i,
        program_id=f"p{i}",
        agent="a",
        arrival=arrival,
        finish=arrival + engine + tool,
        e2e=engine + tool,
        tool_time=tool,
        ttft=0.1,
        normalized_latency=0.01,
        max_queue_wait=0.0,
        output_tokens=100,
        tool_calls=1,
        recomputed_tokens=0,
        preemptions=0,
    )


def summary(policy: str, e2e: float, *, qps: float = 1.0, seed: int = 0) -> RunSummary:
    return summarize(
        [request(0, 0.0, e2e - 1.0)],
        labels=RunLabels(policy=policy, predictor="oracle", qps=qps, seed=seed),
        preset="p",
        counters=EngineCounters(recomputed_tokens=0),
    )


# -- the window ------------------------------------------------------------------------------


def test_the_default_window_is_a_warmup_plus_twenty_unloaded_latencies() -> None:
    w = default_window(53.0)
    assert w.warmup == 110.0  # 2 × 53 s, rounded up to 10 s
    assert w.measured_length == 1060.0 and w.end == 1170.0
    # a duration the user gives is the whole window; the warm-up stays inside it
    assert default_window(53.0, duration=1800) == Window(warmup=110.0, end=1800.0)
    assert default_window(53.0, duration=60).warmup == pytest.approx(6.0)
    assert default_window(53.0, duration=1800, warmup=0) == Window(warmup=0.0, end=1800.0)
    with pytest.raises(ValueError, match="shorter than --duration"):
        default_window(53.0, duration=100, warmup=100)


def test_warmup_arrivals_run_but_are_not_measured(small_preset: Preset) -> None:
    config = BenchConfig(
        programs=generate_programs(6, seed=0),
        trace_name="t",
        preset=small_preset,
        qps=[1.0],
        policies=["lamps"],
        duration=60.0,
        warmup=20.0,
    )
    spec = RunSpec(policy="lamps", predictor="oracle", qps=1.0)
    arrivals = arrivals_for(config, 1.0, 0)
    result = run_one(config, spec, arrivals)
    point = measure(
        config, spec, result, arrivals, ContentionFreeBound(preset=small_preset, policies=["lamps"])
    )
    early = [a for a in arrivals if a.time < 20.0]
    assert early and len(result.requests) == len(arrivals)  # every arrival ran to completion
    assert point.simulated == len(arrivals) and point.measured == len(arrivals) - len(early)
    assert point.summary.num_requests == point.measured
    # measured in the window, and finishing after it (the drain) still counts
    late = max(m.finish for m in result.requests)
    assert late > 60.0 and point.summary.makespan == pytest.approx(late)


def test_the_bound_is_the_program_alone_and_below_any_loaded_run(small_preset: Preset) -> None:
    prog = make_program("x", [(50, 2.0, 10), (30, 0.0, 0)])
    alone = alone_latency(prog, preset=small_preset, policy="lamps")
    assert alone.e2e == pytest.approx(alone.engine + 2.0) and alone.engine > 0
    bound = ContentionFreeBound(preset=small_preset, policies=["vllm", "lamps"])
    assert bound.of(prog).e2e <= alone.e2e
    assert bound.of(prog) is bound.of(prog)  # cached


# -- the stability flag ------------------------------------------------------------------------


def _run(engine_at: float, *, slope: float, n: int = 300, seed: int = 0) -> list[RequestMetrics]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = 10.0 + 90.0 * i / n
        out.append(request(i, t, max(0.01, engine_at + slope * (t - 10.0) + rng.gauss(0, 0.3))))
    return out


def test_a_flat_run_is_stable_and_a_growing_one_is_not() -> None:
    window = Window(warmup=10.0, end=100.0)
    flat = judge_stability(_run(2.0, slope=0.0), window, unloaded_engine=1.0)
    assert flat.stable and flat.growth < flat.threshold
    growing = judge_stability(_run(2.0, slope=0.05), window, unloaded_engine=1.0)
    assert not growing.stable and "grew" in growing.reason
    assert growing.growth == pytest.approx(0.05 * 60, rel=0.1)  # thirds 30 s apart on average
    # noise alone never trips it: a heavy-tailed flat run over many seeds
    for seed in range(20):
        assert judge_stability(_run(2.0, slope=0.0, seed=seed), window).stable


def _long_run(extra: Any) -> tuple[list[RequestMetrics], dict[str, float]]:
    """6,000 s of arrivals every 2 s, engine time 10 s (± noise) plus ``extra(arrival)``; each
    program 100 s long alone (so batches of 200 s: ten per third)."""
    rng = random.Random(3)
    run = [
        request(i, 2.0 * i, 10.0 + rng.gauss(0, 1.0) + extra(2.0 * i), tool=90.0)
        for i in range(3000)
    ]
    return run, {m.program_id: 100.0 for m in run}


def test_a_congestion_episode_in_a_long_window_is_noise_not_growth() -> None:
    """Programs in the engine together share a congestion episode: their engine times are not
    independent samples.  The batch means see the episode as the spread it is; a steady climb
    is still growth."""
    window = Window(warmup=0.0, end=6000.0)
    run, alone = _long_run(lambda t: 30.0 if 5000.0 <= t < 5400.0 else 0.0)
    naive = judge_stability(run, window, run=run)  # no correlation time known: as before
    assert not naive.stable and naive.batches == 0 and "grew" in naive.reason
    verdict = judge_stability(run, window, run=run, alone_e2e=alone)
    assert verdict.stable and verdict.batches == 10
    assert verdict.growth == pytest.approx(naive.growth) and verdict.threshold > verdict.growth
    climbing, alone = _long_run(lambda t: 0.02 * t)
    assert not judge_stability(climbing, window, run=climbing, alone_e2e=alone).stable
    # batches shorter than the correlation time estimate nothing: the independent error stays
    slow = {k: 1000.0 for k in alone}
    short = judge_stability(run, window, run=run, alone_e2e=slow)
    assert short.batches == 0 and short.threshold == pytest.approx(naive.threshold)


def _single_server(
    arrivals: list[float], work: list[float], *, smallest_first: bool
) -> list[float]:
    """Finish times of one server doing ``work`` per arrival, FCFS or smallest job first."""
    finish = [math.inf] * len(arrivals)
    t, i, waiting = 0.0, 0, []
    while i < len(arrivals) or waiting:
        if not waiting:
            t = max(t, arrivals[i])
        while i < len(arrivals) and arrivals[i] <= t:
            waiting.append(i)
            i += 1
        pick = min(waiting, key=lambda j: (work[j] if smallest_first else 0.0, j))
        waiting.remove(pick)
        t += work[pick]
        finish[pick] = t
    return finish


def _served(load: float, *, smallest_first: bool, n: int = 3000) -> list[RequestMetrics]:
    rng = random.Random(7)
    arrivals, work, t = [], [], 0.0
    for _ in range(n):
        t += rng.expovariate(1.0)
        arrivals.append(t)
        work.append(rng.expovariate(1.0 / load))  # mean work `load`: utilisation = load
    finish = _single_server(arrivals, work, smallest_first=smallest_first)
    return [
        dataclasses.replace(request(i, a, f - a, tool=0.0), finish=f)
        for i, (a, f) in enumerate(zip(arrivals, finish, strict=True))
    ]


def test_the_backlog_catches_an_overload_that_starves_the_first_arrivals() -> None:
    """Smallest-first under overload: the window's first arrivals wait longest, so engine time
    does not grow across it; the programs left in the system do."""
    run = _served(1.5, smallest_first=True)
    window = Window(warmup=200.0, end=2800.0)
    measured = window.measured(run)
    blind = judge_stability(measured, window)
    assert blind.stable  # what the engine-time test alone concludes
    verdict = judge_stability(measured, window, run=run, alone_e2e={})
    assert not verdict.stable and "backlog grew" in verdict.reason
    assert verdict.backlog_growth > verdict.backlog_threshold > 0
    # below capacity neither test fires, in either order of service
    for smallest_first in (False, True):
        calm = _served(0.7, smallest_first=smallest_first)
        assert judge_stability(window.measured(calm), window, run=calm, alone_e2e={}).stable


def test_a_backlog_still_filling_with_long_programs_is_not_growth() -> None:
    """Long programs still arriving into an empty engine at the window's start raise the count
    the way they would alone: that rise is the filling, not a queue."""
    window = Window(warmup=10.0, end=100.0)
    run = [request(i, 0.1 * i, 0.5, tool=200.0 if i % 10 == 0 else 1.0) for i in range(1000)]
    alone = {m.program_id: m.e2e for m in run}
    assert judge_stability(window.measured(run), window, run=run, alone_e2e=alone).stable
    assert not judge_stability(window.measured(run), window, run=run, alone_e2e={}).stable


def test_too_few_programs_are_not_judged_and_not_called_unstable() -> None:
    window = Window(warmup=0.0, end=90.0)
    verdict = judge_stability([request(i, 30.0 * i, 1.0) for i in range(4)], window)
    assert verdict.stable is None and "too few" in verdict.reason
    assert verdict.sustained and verdict.verdict == "not judged"  # no capacity lies below it


def _capacity_bench(out: Path, *, qps: str) -> int:
    """``bench --capacity`` of ``lamps`` on a small synthetic workload, starting at ``qps``."""
    return main(
        [
            "bench", "--synthetic", "6", "--set", "gpu_kv_gb=4", "-q", "--no-plots",
            "--policies", "lamps", "--qps", qps, "--duration", "120", "--warmup", "20",
            "--capacity", "--capacity-resolution", "0.5", "--capacity-max", "2",
            "--out", str(out),
        ]
    )  # fmt: skip


def test_capacity_climbs_out_of_a_rate_too_light_to_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started where too few programs arrive to judge, the search goes up to find the capacity
    (it used to halve down to nothing and fail with 'no program arrived')."""
    assert _capacity_bench(tmp_path, qps="0.05") == 0
    (cap,) = json.loads((tmp_path / "results.json").read_text())["config"]["capacity"]
    assert cap["stable_low"] is not None and cap["stable_low"] > 0.05
    out = " ".join(capsys.readouterr().out.split())
    assert "not judged: lamps qps 0.05: seed 0: too few programs per third" in out
    assert "tolerance nan" not in out


# -- capacity ----------------------------------------------------------------------------------


def test_capacity_brackets_then_bisects_to_the_resolution() -> None:
    calls: list[float] = []

    def passes(q: float) -> bool:
        calls.append(q)
        return q <= 7.3

    found = search(passes, start=2.0, resolution=0.05)
    assert found.low is not None and found.high is not None
    assert found.low <= 7.3 < found.high and found.high - found.low <= 0.05 * found.low
    assert calls[:3] == [2.0, 4.0, 8.0]  # doubling until the first failure
    assert len(calls) == len(set(calls)) == len(found.tried)


def test_capacity_searches_down_and_reports_open_brackets() -> None:
    found = search(lambda q: q <= 0.3, start=4.0, resolution=0.1)
    assert found.low is not None and found.high is not None and found.low <= 0.3 < found.high
    never = search(lambda q: False, start=1.0, min_qps=0.25)
    assert never.low is None and never.high == 0.25
    always = search(lambda q: True, start=1.0, max_qps=8.0)
    assert always.low == 8.0 and always.high is None


# -- "≈" ---------------------------------------------------------------------------------------


def _row(policy: str, e2es: list[float], stable: bool | None = True) -> Row:
    (row,) = group(
        [summary(policy, e, seed=i) for i, e in enumerate(e2es)], stable=[stable] * len(e2es)
    )
    return row


def test_a_difference_within_the_spread_is_reported_as_none() -> None:
    base = _row("infercept", [10.0, 10.4, 9.8])
    assert difference(_row("lamps", [9.9, 10.1, 9.7]), base, "e2e_mean") == APPROX
    assert difference(_row("lamps", [8.0, 8.1, 7.9]), base, "e2e_mean") == "+20.0%"
    # one repeat has no spread: the difference is printed as it is
    assert difference(_row("lamps", [9.9]), _row("infercept", [10.0]), "e2e_mean") == "+1.0%"


def test_unstable_rows_print_no_reduction() -> None:
    base = _row("infercept", [10.0, 10.4, 9.8])
    assert difference(_row("lamps", [5.0, 5.1, 5.2], stable=False), base, "e2e_mean") == UNSTABLE
    # one unstable seed makes the row unstable
    (row,) = group(
        [summary("lamps", 5.0, seed=0), summary("lamps", 5.0, seed=1)], stable=[True, False]
    )
    assert row.stable is False
    # a stable row compared with an unstable baseline is not "unstable" itself
    assert (
        difference(_row("lamps", [5.0]), _row("infercept", [9.0], stable=False), "e2e_mean")
        == BASE_UNSTABLE
    )


def _grid() -> list[Row]:
    """The seven-policy demo's qps 6 (issue 24): the baseline infercept is unstable there, sjf is
    stable, vllm unstable on one of two seeds."""
    runs = [
        (summary("infercept", 294.0, qps=6, seed=0), False, "seed 0: engine time grew"),
        (summary("sjf", 289.0, qps=6, seed=0), True, ""),
        (summary("vllm", 400.0, qps=6, seed=0), True, ""),
        (summary("vllm", 600.0, qps=6, seed=1), False, "seed 1: engine time grew 1 → 9 s"),
        (summary("infercept", 56.0, qps=2, seed=0), True, ""),
        (summary("sjf", 55.0, qps=2, seed=0), True, ""),
    ]
    return group([r[0] for r in runs], stable=[r[1] for r in runs], reasons=[r[2] for r in runs])


def _cells(table: Table) -> dict[tuple[str, str], dict[str, str]]:
    columns = [c.header for c in table.columns]
    rows = zip(*(list(c.cells) for c in table.columns), strict=True)
    return {(r[0], r[1]): dict(zip(columns, r, strict=True)) for r in rows}


def test_one_verdict_per_row_drives_the_stable_column_the_deltas_and_the_notes() -> None:
    rows = _grid()
    bases = baseline_rows(rows, "infercept")
    cells = _cells(rows_table(rows, Baseline("infercept"), wide=True))
    narrow = _cells(rows_table(rows, Baseline("infercept")))
    notes = stability_notes(rows, bases)
    deltas = ("ΔE2E", "ΔP99", "ΔTTFT")
    # the contradiction of issue 24: sjf "stable: yes" with Δ "unstable" and no note saying why
    for table in (cells, narrow):
        assert table[("sjf", "6")]["stable"] == "yes"
        assert [table[("sjf", "6")][d] for d in deltas] == [BASE_UNSTABLE] * 3
    for row in rows:
        row_cells = cells[(row.label, f"{row.qps:g}")]
        unstable = row.stable is False
        assert (row_cells["stable"] == "NO") == unstable
        assert all((row_cells[d] == UNSTABLE) == unstable for d in deltas)
        narrow_cells = narrow[(row.label, f"{row.qps:g}")]  # 80 columns: "—" for "unstable"
        assert narrow_cells["stable"] == row_cells["stable"]
        assert all(
            (narrow_cells[d] == "—") == unstable for d in deltas if row.policy != "infercept"
        )
        said = [n for n in notes if n.startswith(f"unstable: {row.label} qps {row.qps:g}:")]
        assert len(said) == unstable
    assert "unstable: vllm qps 6: seed 1: engine time grew 1 → 9 s" in notes
    assert (
        f"{BASE_UNSTABLE}: at qps 6 the baseline infercept is unstable; sjf is stable, with "
        "nothing steady to compare with"
    ) in notes
    assert not any("qps 2" in n for n in notes)


def test_the_plot_circles_exactly_the_unstable_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.figure

    figures: list[Any] = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig)
    )
    rows = _grid()
    unstable = {(r.policy, r.predictor, r.qps) for r in rows if r.stable is False}
    first_seed = [s for r in rows for s in r.samples[:1]]
    plot_latency_vs_qps(first_seed, tmp_path / "p.png", unstable=unstable)
    (fig,) = figures
    for ax in fig.axes:
        (marks,) = [c for c in ax.collections if c.get_label() == UNSTABLE_LABEL]
        circled = sorted(tuple(xy) for xy in marks.get_offsets())
        e2e = {s.policy: s.e2e.mean for s in first_seed if s.qps == 6}
        if ax.get_ylabel().startswith("mean E2E"):
            assert circled == sorted([(6.0, e2e["infercept"]), (6.0, e2e["vllm"])])
        assert len(circled) == 2


def test_spread_text() -> None:
    assert Spread.of([3.0, 1.0, 2.0]).text() == "2.00 (1.00–3.00)"
    assert Spread.of([2.0]).text() == "2.00"
    assert math.isnan(Spread.of([]).median)


# -- the command ---------------------------------------------------------------------------------


def test_bench_prints_the_window_and_leads_with_capacity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _capacity_bench(tmp_path, qps="0.5") == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "arrivals for 120 s, the first 20 s warm-up" in out and "simulated /" in out
    assert out.index("capacity:") < out.index("E2E s")
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("| policy | highest stable qps |")
    assert "| bound qps | share of bound |" in md.splitlines()[0]  # the physical bound
    meta = json.loads((tmp_path / "results.json").read_text())
    assert set(meta["config"]["capacity_bound"]) >= {"kv_kept", "kv_dropped", "compute", "bound"}


def test_capacity_never_tries_beyond_its_limits() -> None:
    tried: list[float] = []
    found = search(lambda q: tried.append(q) or q <= 5.0, start=4.0, max_qps=6.0, resolution=0.1)
    assert max(tried) == 6.0 and tried[:2] == [4.0, 6.0]
    assert found.low is not None and found.low <= 5.0 < (found.high or 0)


def test_a_spec_without_a_seed_runs_the_configs_seed(small_preset: Preset) -> None:
    config = BenchConfig(
        programs=generate_programs(4, seed=0),
        trace_name="t",
        preset=small_preset,
        qps=[2.0],
        policies=["vllm"],
        seed=5,
        num_programs=6,
    )
    run = run_one(config, RunSpec(policy="vllm", predictor="oracle", qps=2.0))
    assert run.summary.seed == 5
    assert [m.arrival for m in run.requests] == [a.time for a in arrivals_for(config, 2.0, 5)]
