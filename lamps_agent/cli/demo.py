"""``lamps-agent demo``: the main job — what agent-aware scheduling buys, capacity first.

Per workload (the multi-API trace and a long-context coding-agent workload by default): each
policy's highest stable arrival rate beside the physical bound, then one load point where every
policy is stable, then one sentence computed from the run, and a plot.  Every number is a
``bench`` measurement (the same protocol, window and stability rule); the capacity searches run
in parallel, one process per core.

Example::

    lamps-agent demo                      # under 2 minutes on 2 cores (103 s measured)
    lamps-agent demo --policies vllm,lamps,continuum,program --jobs 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from lamps_agent.bench.bound import Alone, ContentionFreeBound, best_alone
from lamps_agent.bench.capacity import Bracket, search
from lamps_agent.bench.capacity_bound import capacity_bound
from lamps_agent.bench.demo import (
    STOCK,
    DemoWorkload,
    LoadPoint,
    PolicyCapacity,
    WorkloadResult,
    common_load,
    headline,
)
from lamps_agent.bench.output import prepare_out_dir
from lamps_agent.bench.protocol import VERDICTS
from lamps_agent.bench.runner import BenchConfig, RunSpec, make_bound, run_point
from lamps_agent.bench.tables import (
    bound_share_text,
    bracket_low_text,
    bracket_text,
    stable_text,
)
from lamps_agent.cli import options
from lamps_agent.cli.bench import build_config, table_console, with_window
from lamps_agent.cli.bench import register_commands as register_bench
from lamps_agent.presets import Preset
from lamps_agent.program import Program, Segment

DEFAULT_WORKLOADS = "multi-api@a100-gptj6b,longctx:coding@h200-llama3-8b"
DEFAULT_POLICIES = f"{STOCK},infercept,lamps,program"
SEARCH_FROM = 0.5  # × the bound: every policy measured so far sustains 30-95 % of it
GROWTH = 1.2  # steps up from there: a probe far past capacity is the slowest to simulate
RESOLUTION = 0.1  # the bracket's width relative to its low end
# A generated long-context workload's distinct programs: each is simulated alone under every
# policy for the bound (1,000, bench's default pool, took 190 s on one core of the demo's ~3 min)
DEFAULT_POOL = 250


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: capacity of stock vLLM vs agent-aware schedulers, in the simulator",
        description="Per workload: each policy's highest stable qps beside the physical bound, "
        "one load point where all are stable, and a one-sentence result.",
    )
    p.add_argument(
        "--workloads",
        default=DEFAULT_WORKLOADS,
        help="comma-separated TRACE@PRESET (a trace as bench --trace takes it)",
    )
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="comma-separated policies")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="capacity searches run at once (default: the cores, at most 4)",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        help=f"distinct programs of a generated long-context workload (default {DEFAULT_POOL}; "
        "bench --pool)",
    )
    options.add_seed_option(p)
    p.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run_demo)


# -- in the worker processes -------------------------------------------------------------------
def _alone(
    programs: Sequence[Program], preset: Preset, policies: Sequence[str]
) -> dict[tuple[Segment, ...], Alone]:
    """A slice of a workload's contention-free bound (:func:`best_alone` per program)."""
    return {p.segments: best_alone(p, preset=preset, policies=policies) for p in programs}


def _capacity(setup: Setup, policy: str, limit: float, quiet: bool) -> tuple[Bracket, LoadPoint]:
    """``policy``'s stable-capacity bracket, searched from ``SEARCH_FROM`` × the bound up to the
    bound itself, which is taken as unstable without a run (no scheduler sustains it, and a run
    far past a policy's capacity is the slowest to simulate), and its run at the first rate
    tried."""
    runs: dict[float, LoadPoint] = {}

    def stable(q: float) -> bool:
        if q >= limit:  # at the bound the engine is busy all the time: no queue stays bounded
            if not quiet:
                print(f"demo: {setup.label}: {policy} qps {q:.3g}: at the physical bound, "
                      "beyond capacity (not simulated)", file=sys.stderr, flush=True)  # fmt: skip
            return False
        began = time.perf_counter()
        runs[q] = _run(setup, policy, q)
        if not quiet:
            verdict = VERDICTS[runs[q].stable]
            took = time.perf_counter() - began
            print(f"demo: {setup.label}: {policy} qps {q:.3g}: {verdict} ({took:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
        return runs[q].stable is not False  # a rate too light to judge is below capacity

    start = SEARCH_FROM * limit
    found = search(stable, start=start, resolution=RESOLUTION, max_qps=limit, growth=GROWTH)
    return found, runs[start]


def _run(setup: Setup, policy: str, qps: float) -> LoadPoint:
    spec = RunSpec(policy=policy, predictor="oracle", qps=qps)
    point = run_point(setup.config, spec, setup.bound)
    s = point.summary
    return LoadPoint(policy=policy, qps=qps, stable=point.stability.stable,
                     e2e_mean=s.e2e.mean, e2e_p99=s.e2e.p99, ttft_mean=s.ttft.mean)  # fmt: skip


# -- in the main process -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """One workload as ``bench`` sets it up: its config (steady-state window set) and its
    contention-free bound over every demo policy, so windows and stability verdicts are the
    ones ``bench --policies ...`` gives."""

    label: str
    config: BenchConfig
    bound: ContentionFreeBound


def _bench_args(
    workload: DemoWorkload, policies: Sequence[str], seed: int, pool: int
) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers())
    argv = ["bench", "--trace", workload.trace, "--preset", workload.preset, "--policies",
            ",".join(policies), "--seed", str(seed), "--qps", "1", "--no-plots"]  # fmt: skip
    if workload.generated:
        argv += ["--pool", str(pool)]
    return parser.parse_args(argv)


def _setups(
    pool: ProcessPoolExecutor,
    workloads: Sequence[DemoWorkload],
    policies: Sequence[str],
    args: argparse.Namespace,
) -> dict[DemoWorkload, Setup]:
    """Every workload's setup, its bound computed in slices across the processes."""
    configs = {}
    slices: dict[DemoWorkload, list[Future[dict[tuple[Segment, ...], Alone]]]] = {}
    for w in workloads:
        bench_args = _bench_args(w, policies, args.seed, args.pool)
        config = build_config(bench_args)
        distinct = list({p.segments: p for p in config.programs}.values())
        per = max(1, -(-len(distinct) // (4 * args.jobs)))  # a few slices per process
        slices[w] = [
            pool.submit(_alone, distinct[i : i + per], config.preset, config.policies)
            for i in range(0, len(distinct), per)
        ]
        configs[w] = (config, bench_args)
    setups = {}
    for w in workloads:
        config, bench_args = configs[w]
        bound = make_bound(config)
        for part in slices[w]:
            bound.learn(part.result())
        config, _ = with_window(config, bench_args, bound)
        label = w.label if not w.generated else f"{w.label} (pool {args.pool})"
        setups[w] = Setup(label=label, config=config, bound=bound)
    return setups


def _done(point: LoadPoint | Future[LoadPoint]) -> LoadPoint:
    return point.result() if isinstance(point, Future) else point


def _checked(args: argparse.Namespace) -> tuple[list[DemoWorkload], list[str]]:
    from lamps_agent.policies import POLICIES

    workloads = [DemoWorkload.parse(t) for t in options.split(args.workloads)]
    if not workloads:
        raise ValueError("--workloads: give at least one TRACE@PRESET")
    policies = options.names(args.policies, "--policies", POLICIES)
    if STOCK not in policies:
        raise ValueError(f"--policies: include {STOCK} (stock vLLM), what the result compares with")
    if args.jobs < 1:
        raise ValueError(f"--jobs: must be at least 1, got {args.jobs}")
    if args.pool < 1:
        raise ValueError(f"--pool: must be at least 1, got {args.pool}")
    for w in workloads:  # every flag checked (and a bad trace named) before anything runs
        bench_args = _bench_args(w, policies, args.seed, args.pool)
        options.preset(bench_args)
        options.scaled_workload(bench_args)
    return workloads, policies


def run_demo(args: argparse.Namespace) -> int:
    workloads, policies = _checked(args)
    out = prepare_out_dir(args.out, overwrite=args.overwrite)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        setups = _setups(pool, workloads, policies, args)
        limits = {w: capacity_bound(s.config.programs, s.config.preset) for w, s in setups.items()}
        searches: dict[tuple[DemoWorkload, str], Future[tuple[Bracket, LoadPoint]]] = {
            (w, p): pool.submit(_capacity, setups[w], p, limits[w].bound, args.quiet)
            for w in workloads
            for p in policies
        }
        found = {key: f.result() for key, f in searches.items()}
        caps = {key: bracket for key, (bracket, _) in found.items()}
        loads: dict[DemoWorkload, float | None] = {}
        points: dict[tuple[DemoWorkload, str], LoadPoint | Future[LoadPoint]] = {}
        for w in workloads:
            first = {p: found[w, p][1] for p in policies}
            if all(pt.stable is not False for pt in first.values()):
                # the searches' first rate, where every policy was stable: already simulated
                loads[w] = SEARCH_FROM * limits[w].bound
                points.update({(w, p): pt for p, pt in first.items()})
                continue
            per = [PolicyCapacity(policy=p, bracket=caps[w, p]) for p in policies]
            load = loads[w] = common_load(per)
            if load is not None:
                for p in policies:
                    points[w, p] = pool.submit(_run, setups[w], p, load)
        results = [
            WorkloadResult(
                workload=w,
                label=setups[w].label,
                bound=limits[w],
                capacities=tuple(PolicyCapacity(policy=p, bracket=caps[w, p]) for p in policies),
                load_qps=loads[w],
                at_load=tuple(_done(points[w, p]) for p in policies if (w, p) in points),
            )
            for w in workloads
        ]
    elapsed = time.perf_counter() - started
    console = table_console(wide=False)
    for r in results:
        console.print(capacity_view(r))
        if r.at_load:
            console.print(load_view(r))
        console.print(f"[bold]{escape(headline(r))}[/bold]\n")
    (out / "demo.md").write_text(markdown(results, elapsed, args))
    if not args.no_plots:
        from lamps_agent.bench.plots import plot_capacity

        plot_capacity(results, out / "capacity.png")
    console.print(
        f"{len(results)} workloads × {len(policies)} policies in {elapsed:.0f} s "
        f"({args.jobs} at once, seed {args.seed}); tables, sentence"
        + ("" if args.no_plots else " and plot")
        + f" in {out}/ (every number: lamps-agent bench, docs/benchmarks.md)"
    )
    return 0


def _cap_cells(r: WorkloadResult, c: PolicyCapacity) -> list[str]:
    b, stock = c.bracket, r.capacity_of(STOCK)
    ratio = (
        f"{b.low / stock.capacity:.2f}×"
        if b.low is not None and stock is not None and stock.capacity
        else "—"
    )
    return [c.policy, bracket_low_text(b), bracket_text(b), bound_share_text(b, r.bound), ratio]


def capacity_view(r: WorkloadResult) -> Table:
    table = Table(
        title=f"{r.label}: highest stable programs/s (bound {r.bound.bound:.3g}, {r.bound.limit})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for h in ("policy", "stable qps", "bracket", "of bound", f"× {STOCK}"):
        table.add_column(h, justify="left" if h == "policy" else "right", no_wrap=True)
    for c in r.capacities:
        table.add_row(*_cap_cells(r, c))
    return table


def load_view(r: WorkloadResult) -> Table:
    assert r.load_qps is not None
    table = Table(title=f"at {r.load_qps:.3g} programs/s", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ("policy", "stable", "E2E mean s", "E2E P99 s", "TTFT mean s"):
        table.add_column(h, justify="left" if h == "policy" else "right", no_wrap=True)
    for p in r.at_load:
        table.add_row(p.policy, stable_text(p.stable), f"{p.e2e_mean:.2f}",
                      f"{p.e2e_p99:.2f}", f"{p.ttft_mean:.3f}")  # fmt: skip
    return table


def markdown(results: Sequence[WorkloadResult], elapsed: float, args: argparse.Namespace) -> str:
    lines = [f"`lamps-agent demo` (seed {args.seed}, {elapsed:.0f} s)", ""]
    for r in results:
        lines += [f"### {r.label}", "",
                  f"Bound: {r.bound.bound:.3g} programs/s ({r.bound.limit}-bound; KV kept "
                  f"{r.bound.kv_kept:.3g}, KV dropped {r.bound.kv_dropped:.3g}, compute "
                  f"{r.bound.compute:.3g}).", "",
                  f"| policy | stable qps | bracket | of bound | × {STOCK} |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += ["| " + " | ".join(_cap_cells(r, c)) + " |" for c in r.capacities]
        if r.at_load and r.load_qps is not None:
            lines += ["", f"At {r.load_qps:.3g} programs/s:", "",
                      "| policy | stable | E2E mean s | E2E P99 s | TTFT mean s |",
                      "|---|:---:|---:|---:|---:|"]  # fmt: skip
            lines += [
                f"| {p.policy} | {stable_text(p.stable)} | {p.e2e_mean:.2f} | "
                f"{p.e2e_p99:.2f} | {p.ttft_mean:.3f} |"
                for p in r.at_load
            ]
        lines += ["", headline(r), ""]
    return "\n".join(lines)
