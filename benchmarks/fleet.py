"""Fleet routing: 1, 4 and 16 replicas at a fixed load per replica, per routing policy, and the
capacity per replica of the fleets that matter for the routing question.

    python benchmarks/fleet.py                       # the long-context agent workload (longctx)
    python benchmarks/fleet.py --workload multi-api  # the INFERCEPT multi-API trace

Every measured point simulates the same replica-time: a fleet of N replicas runs
``--replica-runs / N`` seeds, pooled (one replica: 16 independent runs by default), so a 1-replica point is no noisier than a 16-replica
one.  A run receives programs at N × rate for ``--duration`` seconds; the benchmark protocol
(:mod:`lamps_agent.bench.protocol`) measures the programs arriving after ``--warmup`` and judges
the point stable or not on the pooled programs (the engine time of the window's last third must
not exceed its first third's by more than its tolerance).

Capacity is the protocol's search (:mod:`lamps_agent.bench.capacity`) from the fixed load,
bracketed to ``--resolution``, for the test "stable, and the mean engine time (E2E minus tool
time: what scheduling and routing control) within ``--engine-target`` × the contention-free
mean engine time" — a latency target, as ``bench --p99-target`` adds one, because a window this
short (the protocol's default is 20 unloaded E2E latencies; that is 5× the CPU) cannot see the
queue grow when a fleet is overloaded from its first seconds: round robin at 16 replicas was
judged stable at 0.6 programs/s per replica (one replica is unstable above 0.24), with a mean
engine time of 27 minutes.

Prints a markdown table, then the wall and CPU time of the whole benchmark.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lamps_agent.bench.bound import ContentionFreeBound
from lamps_agent.bench.capacity import Bracket, search
from lamps_agent.bench.fleet import FleetConfig, FleetSpec, run_fleet
from lamps_agent.bench.protocol import Stability, Window, judge_stability
from lamps_agent.metrics import RequestMetrics
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program
from lamps_agent.sim.routing import ROUTERS
from lamps_agent.workloads import load_trace
from lamps_agent.workloads.longctx import generate_longctx

BOUND_SAMPLE = 200  # programs whose contention-free engine time sets the tolerance floor


@dataclass(frozen=True, slots=True)
class Point:
    """One (fleet size, routing, rate per replica), pooled over its seeds."""

    replicas: int
    routing: str
    qps: float
    programs: int  # measured: arrived in the window after the warm-up
    stability: Stability
    engine_mean: float
    e2e_mean: float
    e2e_p99: float
    recomputed_per_program: float  # every program of the runs
    moved_per_program: float  # KV released because the session moved (prefix hits may return it)
    moves_per_turn: float


class Bench:
    def __init__(
        self, programs: Sequence[Program], preset: Preset, window: Window, args: argparse.Namespace
    ) -> None:
        self.programs = programs
        self.preset = preset
        self.window = window
        self.args = args
        bound = ContentionFreeBound(preset=preset, policies=[args.policy])
        self.unloaded_engine = bound.mean_engine(programs[:BOUND_SAMPLE])
        self.points: dict[tuple[int, str, float], Point] = {}
        self.started = time.perf_counter()

    def point(self, replicas: int, routing: str, qps: float) -> Point:
        key = (replicas, routing, qps)
        if key not in self.points:
            self.points[key] = self._measure(replicas, routing, qps)
            p = self.points[key]
            print(
                f"  {replicas:>2} × {routing:<16} qps {qps:<7.4g} engine {p.engine_mean:7.1f} s "
                f"{'stable' if p.stability.stable else 'unstable':<8} "
                f"{'passes' if self.passes(p) else 'fails':<6} "
                f"({time.perf_counter() - self.started:4.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        return self.points[key]

    def _measure(self, replicas: int, routing: str, qps: float) -> Point:
        measured: list[RequestMetrics] = []
        total = recomputed = moved = moves = turns = 0
        for seed in range(max(1, self.args.replica_runs // replicas)):
            config = FleetConfig(
                programs=self.programs,
                trace_name=self.args.workload,
                preset=self.preset,
                duration=self.window.end,
                policy=self.args.policy,
                seed=seed,
            )
            spec = FleetSpec(replicas=replicas, routing=routing, qps_per_replica=qps)
            result = run_fleet(config, spec)
            measured += self.window.measured(result.run.requests)
            total += result.summary.num_requests
            recomputed += result.summary.recomputed_tokens
            moved += result.dropped_tokens
            moves += result.moves
            turns += sum(r.turns for r in result.replicas)
        e2e = [m.e2e for m in measured]
        return Point(
            replicas=replicas,
            routing=routing,
            qps=qps,
            programs=len(measured),
            stability=judge_stability(measured, self.window, unloaded_engine=self.unloaded_engine),
            engine_mean=statistics.fmean(m.e2e - m.tool_time for m in measured),
            e2e_mean=statistics.fmean(e2e),
            e2e_p99=float(np.percentile(e2e, 99)),
            recomputed_per_program=recomputed / total,
            moved_per_program=moved / total,
            moves_per_turn=moves / turns,
        )

    def passes(self, point: Point) -> bool:
        target = self.args.engine_target * self.unloaded_engine
        return point.stability.stable and point.engine_mean <= target

    def capacity(self, replicas: int, routing: str) -> Bracket:
        return search(
            lambda q: self.passes(self.point(replicas, routing, round(q, 6))),
            start=self.args.qps,
            resolution=self.args.resolution,
            min_qps=self.args.qps / 16,
            max_qps=self.args.qps * 8,
        )


def load_programs(name: str) -> tuple[list[Program], str]:
    if name == "multi-api":
        return list(load_trace("multi-api").programs), "INFERCEPT multi-API trace (397 programs)"
    return generate_longctx(
        1000, seed=0
    ), "long-context agent mix (longctx: 1,000 programs, seed 0)"


def _bracket(b: Bracket | None) -> str:
    if b is None:
        return "not run"
    low = "—" if b.low is None else f"{b.low:.3g}"
    high = "—" if b.high is None else f"{b.high:.3g}"
    return f"{low}–{high}"


def _mid(b: Bracket | None) -> float:
    if b is None or b.low is None or b.high is None:
        return math.nan
    return (b.low + b.high) / 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="longctx", choices=["longctx", "multi-api"])
    parser.add_argument("--preset", default="h100-llama3-8b")
    parser.add_argument("--policy", default="lamps")
    parser.add_argument("--replicas", default="1,4,16")
    parser.add_argument("--routing", default=",".join(ROUTERS.names()))
    parser.add_argument("--qps", type=float, default=0.15, help="the fixed load, per replica")
    parser.add_argument("--duration", type=float, default=340.0, help="seconds of arrivals")
    parser.add_argument("--warmup", type=float, default=130.0, help="arrivals not measured")
    parser.add_argument(
        "--replica-runs", type=int, default=16, help="replicas × seeds behind every point"
    )
    parser.add_argument("--resolution", type=float, default=0.1, help="capacity bracket, relative")
    parser.add_argument(
        "--engine-target",
        type=float,
        default=3.0,
        help="capacity: mean engine time within this × the contention-free mean engine time",
    )
    parser.add_argument(
        "--capacity",
        default="1:session-affinity,16:session-affinity,16:round-robin",
        help="N:ROUTING pairs whose capacity is searched ('all': every fleet and routing)",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.replicas.split(",")]
    routings = args.routing.split(",")
    if args.capacity == "all":
        wanted = {(n, r) for n in sizes for r in (routings if n > 1 else ["session-affinity"])}
    else:
        wanted = {(int(n), r) for n, _, r in (x.partition(":") for x in args.capacity.split(","))}
    programs, described = load_programs(args.workload)
    preset = load_preset(args.preset)
    wall, cpu = time.perf_counter(), time.process_time()
    bench = Bench(programs, preset, Window(warmup=args.warmup, end=args.duration), args)
    rows: list[tuple[Point, Bracket | None]] = []
    for n in sizes:
        # One replica: every router places every turn on it (tested), so it runs once.
        for routing in ["session-affinity"] if n == 1 else routings:
            fixed = bench.point(n, routing, args.qps)
            cap = bench.capacity(n, routing) if (n, routing) in wanted else None
            rows.append((fixed, cap))
    base = next((cap for p, cap in rows if p.replicas == 1), None)
    print(
        f"{described}; preset {args.preset}, policy {args.policy}, oracle predictor.  Arrivals for "
        f"{args.duration:g} s per run, those after {args.warmup:g} s measured; {args.replica_runs} "
        f"replica-runs per point ({args.replica_runs} / N seeds, pooled).  Fixed load {args.qps:g} programs/s per "
        f"replica.  Capacity: stable and mean engine time ≤ {args.engine_target:g} × "
        f"{bench.unloaded_engine:.1f} s (contention-free, {BOUND_SAMPLE} programs) = "
        f"{args.engine_target * bench.unloaded_engine:.1f} s, bracketed to "
        f"{args.resolution:.0%} by the protocol's search."
    )
    print()
    print(
        "| replicas | routing | measured | stable, within target | E2E mean s | E2E P99 s | engine mean s | "
        "recomputed tok / program | released by moves / program | moves / turn | capacity / replica | "
        "vs 1 replica |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, cap in rows:
        ratio = _mid(cap) / _mid(base)
        print(
            f"| {p.replicas} | {'any' if p.replicas == 1 else p.routing} | {p.programs:,} | "
            f"{'yes' if p.stability.stable else 'no'}, {'yes' if bench.passes(p) else 'no'} | "
            f"{p.e2e_mean:.1f} | {p.e2e_p99:.1f} | "
            f"{p.engine_mean:.1f} | {p.recomputed_per_program:,.0f} | "
            f"{p.moved_per_program:,.0f} | {p.moves_per_turn:.2f} | {_bracket(cap)} | "
            f"{'—' if math.isnan(ratio) else f'{ratio:.0%}'} |"
        )
    print()
    print(
        f"{len(bench.points)} points; wall {time.perf_counter() - wall:.0f} s, "
        f"CPU {time.process_time() - cpu:.0f} s"
    )


if __name__ == "__main__":
    main()
