"""``lamps-agent demo``: the main job — what agent-aware scheduling buys, capacity first.

Per workload (the multi-API trace and a long-context coding-agent workload by default): each
policy's highest stable arrival rate beside the physical bound, then one load point where every
policy is stable, then one sentence computed from the run, and a plot.  Every number is a
``bench`` measurement (the same protocol, window and stability rule); the capacity searches run
in parallel, one process per core.

Example::

    lamps-agent demo                      # 7.4 minutes on 2 cores (443 s measured)
    lamps-agent demo --policies vllm,lamps,continuum,program --jobs 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from lamps_agent.bench.bound import ContentionFreeBound
from lamps_agent.bench.capacity import Bracket, search
from lamps_agent.bench.capacity_bound import CapacityBound, capacity_bound
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
from lamps_agent.bench.runner import BenchConfig, RunSpec, make_bound, run_point
from lamps_agent.bench.tables import bound_share_text, bracket_low_text, bracket_text
from lamps_agent.cli import options
from lamps_agent.cli.bench import build_config, table_console, with_window
from lamps_agent.cli.bench import register_commands as register_bench

DEFAULT_WORKLOADS = "multi-api@a100-gptj6b,longctx:coding@h200-llama3-8b"
DEFAULT_POLICIES = f"{STOCK},infercept,lamps,program"
SEARCH_FROM = 0.5  # × the bound: every policy measured so far sustains 30-95 % of it
GROWTH = 1.2  # steps up from there: a probe far past capacity is the slowest to simulate
RESOLUTION = 0.1  # the bracket's width relative to its low end


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
    options.add_seed_option(p)
    p.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run_demo)


# -- in the worker processes -------------------------------------------------------------------
_SETUPS: dict[
    tuple[DemoWorkload, tuple[str, ...], int], tuple[BenchConfig, ContentionFreeBound]
] = {}


def _bench_args(workload: DemoWorkload, policies: Sequence[str], seed: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers())
    argv = ["bench", "--trace", workload.trace, "--preset", workload.preset, "--policies",
            ",".join(policies), "--seed", str(seed), "--qps", "1", "--no-plots"]  # fmt: skip
    return parser.parse_args(argv)


def _setup(
    workload: DemoWorkload, policies: Sequence[str], seed: int
) -> tuple[BenchConfig, ContentionFreeBound]:
    """The bench config (steady-state window set) and contention-free bound, once per process.
    The bound is over every demo policy, as ``bench`` computes it, so windows and stability
    verdicts are the ones ``bench --policies ...`` gives."""
    key = (workload, tuple(policies), seed)
    if key not in _SETUPS:
        args = _bench_args(workload, policies, seed)
        config = build_config(args)
        bound = make_bound(config)
        config, _ = with_window(config, args, bound)
        _SETUPS[key] = (config, bound)
    return _SETUPS[key]


def _capacity(
    workload: DemoWorkload,
    policies: Sequence[str],
    policy: str,
    seed: int,
    limit: float,
    quiet: bool,
) -> tuple[Bracket, LoadPoint]:
    """``policy``'s stable-capacity bracket, searched from ``SEARCH_FROM`` × the bound up to the
    bound itself (no scheduler sustains more), and its run at the first rate tried."""
    config, bound = _setup(workload, policies, seed)
    runs: dict[float, LoadPoint] = {}

    def stable(q: float) -> bool:
        runs[q] = _run(config, bound, policy, q)
        if not quiet:
            verdict = "stable" if runs[q].stable else "unstable"
            print(f"demo: {workload.label}: {policy} qps {q:.3g}: {verdict}", file=sys.stderr,
                  flush=True)  # fmt: skip
        return runs[q].stable

    start = SEARCH_FROM * limit
    found = search(stable, start=start, resolution=RESOLUTION, max_qps=limit, growth=GROWTH)
    return found, runs[start]


def _run(config: BenchConfig, bound: ContentionFreeBound, policy: str, qps: float) -> LoadPoint:
    point = run_point(config, RunSpec(policy=policy, predictor="oracle", qps=qps), bound)
    s = point.summary
    return LoadPoint(policy=policy, qps=qps, stable=point.stability.stable,
                     e2e_mean=s.e2e.mean, e2e_p99=s.e2e.p99, ttft_mean=s.ttft.mean)  # fmt: skip


def _load_point(
    workload: DemoWorkload, policies: Sequence[str], policy: str, seed: int, qps: float
) -> LoadPoint:
    config, bound = _setup(workload, policies, seed)
    return _run(config, bound, policy, qps)


def _physical_bound(workload: DemoWorkload, policies: Sequence[str], seed: int) -> CapacityBound:
    config, _ = _setup(workload, policies, seed)
    return capacity_bound(config.programs, config.preset)


# -- in the main process -----------------------------------------------------------------------
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
    for w in workloads:  # every flag checked (and a bad trace named) before anything runs
        bench_args = _bench_args(w, policies, args.seed)
        options.preset(bench_args)
        options.scaled_workload(bench_args)
    return workloads, policies


def run_demo(args: argparse.Namespace) -> int:
    workloads, policies = _checked(args)
    out = prepare_out_dir(args.out, overwrite=args.overwrite)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        bounds = {w: pool.submit(_physical_bound, w, policies, args.seed) for w in workloads}
        limits = {w: f.result() for w, f in bounds.items()}
        searches: dict[tuple[DemoWorkload, str], Future[tuple[Bracket, LoadPoint]]] = {
            (w, p): pool.submit(_capacity, w, policies, p, args.seed, limits[w].bound, args.quiet)
            for w in workloads
            for p in policies
        }
        found = {key: f.result() for key, f in searches.items()}
        caps = {key: bracket for key, (bracket, _) in found.items()}
        loads: dict[DemoWorkload, float | None] = {}
        points: dict[tuple[DemoWorkload, str], LoadPoint | Future[LoadPoint]] = {}
        for w in workloads:
            first = {p: found[w, p][1] for p in policies}
            if all(pt.stable for pt in first.values()):
                # the searches' first rate, where every policy was stable: already simulated
                loads[w] = SEARCH_FROM * limits[w].bound
                points.update({(w, p): pt for p, pt in first.items()})
                continue
            per = [PolicyCapacity(policy=p, bracket=caps[w, p]) for p in policies]
            load = loads[w] = common_load(per)
            if load is not None:
                for p in policies:
                    points[w, p] = pool.submit(_load_point, w, policies, p, args.seed, load)
        results = [
            WorkloadResult(
                workload=w,
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
        title=f"{r.workload.label}: highest stable programs/s (bound {r.bound.bound:.3g}, "
        f"{r.bound.limit})",
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
        table.add_row(p.policy, "yes" if p.stable else "NO", f"{p.e2e_mean:.2f}",
                      f"{p.e2e_p99:.2f}", f"{p.ttft_mean:.3f}")  # fmt: skip
    return table


def markdown(results: Sequence[WorkloadResult], elapsed: float, args: argparse.Namespace) -> str:
    lines = [f"`lamps-agent demo` (seed {args.seed}, {elapsed:.0f} s)", ""]
    for r in results:
        lines += [f"### {r.workload.label}", "",
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
                f"| {p.policy} | {'yes' if p.stable else 'NO'} | {p.e2e_mean:.2f} | "
                f"{p.e2e_p99:.2f} | {p.ttft_mean:.3f} |"
                for p in r.at_load
            ]
        lines += ["", headline(r), ""]
    return "\n".join(lines)
