"""The program-aware policy against lamps, infercept and stock vLLM, in the simulator.

    python benchmarks/program_policy.py --seeds 0,1,2 --jobs 2

Prints, for the long-context agent workload (``longctx``: coding agents, tool-use agents, chat
with tools) and the INFERCEPT multi-API trace, on the ``h100-llama3-8b`` preset:

1. capacity — the highest stable arrival rate (programs/s) of each policy, per seed and mean;
2. at 90 % of LAMPS' capacity — mean / P99 E2E of every policy and the ratios to LAMPS;
3. below 50 % of LAMPS' capacity (45 %) — every metric of ``program`` against LAMPS;
4. sensitivity of ``program`` to footprint prediction error (true footprint × (1 + e),
   e ~ N(0, 0 / 25 / 50 %), and the online history predictor) at 90 % of LAMPS' capacity;
5. a burst — the arrival rate doubles for one minute in the middle of the window — with the
   admission threshold's state over time.

Stability rule (this script's, stated): arrivals for a fixed window (1,800 s for the long-context
workloads, 300 s for the multi-API trace; Poisson, sampled with replacement from a seeded pool);
the slowdown of a set of programs is Σ E2E / Σ E2E-alone (E2E alone: every turn prefilled and
decoded on an idle engine, plus its tools).  A run is stable when the slowdown of the programs
that arrived in the last third of the window is at most 1.3× that of the middle third (a growing
backlog slows later arrivals) and the slowdown of all is at most 3.  Capacity: rates grow by
×1.25 from a start until a run is unstable, then 3 bisection steps between the last stable and
the first unstable rate.  Deterministic: the same seeds give the same tables.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lamps_agent.metrics import RunResult, RunSummary
from lamps_agent.policies import make_policy
from lamps_agent.policies.program import ProgramPolicy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import load_trace, poisson_workload
from lamps_agent.workloads.arrivals import Arrival
from lamps_agent.workloads.longctx import generate_longctx

POLICIES = ("program", "lamps", "infercept", "vllm")
MAX_TREND = 1.3  # the stability rule: later arrivals at most 1.3x slower than earlier ones
MAX_SLOWDOWN = 3.0  # ... and programs on average at most 3x slower than on an idle engine
WORKLOADS = {"longctx": 1800.0, "longctx:coding": 1800.0, "multi-api": 300.0}  # -> window (s)
START = {"longctx": 0.08, "longctx:coding": 0.06, "multi-api": 4.0}


@dataclass(frozen=True)
class Spec:
    workload: str
    policy: str
    qps: float
    seed: int
    window: float
    preset_overrides: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    burst: tuple[float, float] | None = None  # (start s, length s): the rate doubles


@lru_cache(maxsize=8)
def _pool(workload: str, seed: int) -> tuple[Program, ...]:
    if workload.startswith("longctx"):
        kinds = workload.partition(":")[2] or "mix"
        return tuple(generate_longctx(1000, kinds=kinds, seed=seed))
    return tuple(load_trace(workload).programs)


@lru_cache(maxsize=4)
def _preset(overrides: tuple[tuple[str, str], ...]) -> Preset:
    return load_preset("h100-llama3-8b", overrides=dict(overrides))


def _arrivals(spec: Spec) -> list[Arrival]:
    pool = _pool(spec.workload, spec.seed)
    if spec.burst is None:
        return poisson_workload(pool, qps=spec.qps, seed=spec.seed, duration=spec.window)
    # Thinning: a Poisson process at twice the rate, every second arrival kept outside the burst.
    start, length = spec.burst
    base = poisson_workload(pool, qps=2 * spec.qps, seed=spec.seed, duration=spec.window)
    keep = random.Random(f"burst-{spec.seed}")
    return [a for a in base if start <= a.time < start + length or keep.random() < 0.5]


@dataclass
class Outcome:
    spec: Spec
    summary: RunSummary
    stable: bool
    trend: float  # mean E2E of the last third / the middle third
    cpu_s: float
    trace: list[tuple[float, float, int, int]] | None = None  # (t, committed/budget, flight, held)
    burst_e2e: float = math.nan  # mean E2E of the programs that arrived during the burst


class _Recording(ProgramPolicy):
    """The program policy, recording the threshold's state once per simulated second."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.samples: list[tuple[float, float, int, int]] = []
        self._next = 0.0

    def admission_gate(self):  # type: ignore[no-untyped-def]
        now = self.view.now
        if now >= self._next:
            self._next = math.floor(now) + 1.0
            self.samples.append(
                (now, self.committed / self.budget_tokens, len(self.in_flight), self.counters_held)
            )
        return super().admission_gate()


def run(spec: Spec) -> Outcome:
    preset = _preset(spec.preset_overrides)
    arrivals = _arrivals(spec)
    predictor = make_predictor("oracle")
    options = dict(spec.options)
    if spec.policy == "program" and spec.burst is not None:
        policy: Any = _Recording(predictor=predictor, preset=preset, **options)
    else:
        policy = make_policy(spec.policy, predictor=predictor, preset=preset, **options)
    sim = Simulator(preset=preset, policy=policy, arrivals=arrivals)
    cpu = time.process_time()
    result = sim.run(
        RunLabels(policy=spec.policy, predictor="oracle", trace=spec.workload, qps=spec.qps)
    )
    cpu = time.process_time() - cpu
    programs = {a.program.program_id: a.program for a in arrivals}
    trend = _trend(result, spec.window, preset, programs)
    trace = policy.samples if isinstance(policy, _Recording) else None
    burst_e2e = math.nan
    if spec.burst is not None:
        start, length = spec.burst
        during = [r.e2e for r in result.requests if start <= r.arrival < start + length]
        burst_e2e = statistics.fmean(during) if during else math.nan
    stable = (
        trend <= MAX_TREND and _slowdown(result, 0.0, spec.window, preset, programs) <= MAX_SLOWDOWN
    )
    return Outcome(spec, result.summary, stable, trend, cpu, trace, burst_e2e)


def _slowdown(
    result: RunResult, lo: float, hi: float, preset: Preset, programs: dict[str, Program]
) -> float:
    """Σ E2E / Σ E2E alone over the programs that arrived in [lo, hi): the aggregate slowdown
    (time in the system per second of the same programs on an idle engine)."""
    e2e = alone = 0.0
    for r in result.requests:
        if lo <= r.arrival < hi:
            e2e += r.e2e
            alone += _alone(programs[r.program_id], preset)
    return e2e / alone if alone > 0 else 1.0


def _trend(result: RunResult, window: float, preset: Preset, programs: dict[str, Program]) -> float:
    """Mean slowdown of the programs that arrived in the last third of the window over that of
    the middle third: a growing backlog slows later arrivals."""
    last = _slowdown(result, 2 * window / 3, window, preset, programs)
    return last / _slowdown(result, window / 3, 2 * window / 3, preset, programs)


def _alone(program: Program, preset: Preset) -> float:
    """Seconds the program takes on an otherwise idle engine: every turn's prompt prefilled in
    chunks, its output decoded one token per iteration, its tools."""
    cost = preset.cost
    total = 0.0
    for seg in program.segments:
        total += cost.prefill_time(seg.prompt_tokens, preset.token_budget)
        total += seg.output_tokens * cost.iteration_time(0, 1, seg.prompt_tokens)
        total += seg.tool_duration
    return total


def run_all(specs: Sequence[Spec], jobs: int) -> list[Outcome]:
    if jobs <= 1:
        return [run(s) for s in specs]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, specs))


def capacity(
    workload: str, policy: str, seed: int, base: dict[str, Any], jobs: int = 1
) -> tuple[float, int]:
    """Highest stable rate by the stated rule; returns (rate, runs)."""
    window = WORKLOADS[workload]

    def stable(qps: float) -> bool:
        return run(Spec(workload, policy, qps, seed, window, **base)).stable

    runs = 0
    lo, hi = 0.0, START[workload]
    while True:
        runs += 1
        if not stable(hi):
            break
        lo, hi = hi, hi * 1.25
        if hi > 1000:
            raise RuntimeError(f"{policy} on {workload}: no unstable rate found")
    if lo == 0.0:  # the start is already unstable: walk down
        hi_bad = hi
        lo = hi / 1.25
        while not stable(lo):
            runs += 1
            hi_bad, lo = lo, lo / 1.25
        hi = hi_bad
    for _ in range(3):
        mid = (lo + hi) / 2
        runs += 1
        if stable(mid):
            lo = mid
        else:
            hi = mid
    return lo, runs


def _cap_job(args: tuple[str, str, int, dict[str, Any]]) -> tuple[str, str, int, float, int]:
    workload, policy, seed, base = args
    rate, runs = capacity(workload, policy, seed, base)
    return workload, policy, seed, rate, runs


def _fmt(x: float) -> str:
    return f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _mean(outs: list[Outcome], get: Callable[[RunSummary], float]) -> float:
    return statistics.fmean(get(o.summary) for o in outs)


METRICS: dict[str, Callable[[RunSummary], float]] = {
    "E2E mean": lambda s: s.e2e.mean,
    "E2E P50": lambda s: s.e2e.p50,
    "E2E P90": lambda s: s.e2e.p90,
    "E2E P99": lambda s: s.e2e.p99,
    "TTFT mean": lambda s: s.ttft.mean,
    "TTFT P99": lambda s: s.ttft.p99,
    "norm. latency mean": lambda s: s.normalized_latency.mean,
    "engine time mean": lambda s: s.engine_time.mean,
    "max queue wait P99": lambda s: s.max_queue_wait.p99,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workloads", default="longctx:coding,multi-api")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--set",
        action="append",
        default=["host_swap_gb=256"],
        metavar="KEY=VALUE",
        help="preset override (default host_swap_gb=256: one H100's share of a server's RAM)",
    )
    parser.add_argument(
        "--lamps-capacity",
        action="append",
        default=[],
        metavar="WORKLOAD=RATE",
        help="use this as LAMPS' capacity on WORKLOAD instead of searching (repeatable)",
    )
    parser.add_argument("--skip", default="", help="sections to skip: capacity,sensitivity,burst")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    workloads = [w for w in args.workloads.split(",") if w]
    policies = [p for p in args.policies.split(",") if p]
    skip = set(args.skip.split(","))
    overrides = tuple(tuple(s.split("=", 1)) for s in args.set)
    base: dict[str, Any] = {"preset_overrides": overrides}
    started = time.perf_counter()
    print(
        f"preset h100-llama3-8b, overrides {dict(overrides)}, seeds {seeds}, oracle predictor",
        flush=True,
    )

    caps: dict[tuple[str, str], list[float]] = {}
    given = dict(item.split("=", 1) for item in args.lamps_capacity)
    for w, rate in given.items():
        caps[(w, "lamps")] = [float(rate)]
        print(f"{w}: LAMPS' capacity given as {float(rate):.3g} programs/s (no search)", flush=True)
    jobs = [(w, p, s, base) for w in workloads if w not in given for p in policies for s in seeds]
    if jobs:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for w, p, _s, rate, _runs in pool.map(_cap_job, jobs):
                caps.setdefault((w, p), []).append(rate)
        print("\n## Capacity (highest stable programs/s)\n")
        print(
            "| workload | policy | "
            + " | ".join(f"seed {s}" for s in seeds)
            + " | mean | × lamps |"
        )
        print("|---|---|" + "---:|" * (len(seeds) + 2))
        for w in workloads:
            if w in given:
                continue
            ref = statistics.fmean(caps[(w, "lamps")]) if (w, "lamps") in caps else math.nan
            for p in policies:
                c = caps[(w, p)]
                m = statistics.fmean(c)
                row = " | ".join(f"{x:.3g}" for x in c)
                print(f"| {w} | {p} | {row} | {m:.3g} | {m / ref:.2f} |", flush=True)

    for w in workloads:
        ref = statistics.fmean(caps[(w, "lamps")])
        for frac in (0.9, 0.45):
            qps = frac * ref
            specs = [Spec(w, p, qps, s, WORKLOADS[w], **base) for p in policies for s in seeds]
            outs = run_all(specs, args.jobs)
            by = {p: [o for o in outs if o.spec.policy == p] for p in policies}
            print(f"\n## {w} at {frac:.0%} of LAMPS' capacity ({qps:.3g} programs/s)\n")
            print("| metric | " + " | ".join(policies) + " | program / lamps |")
            print("|---|" + "---:|" * (len(policies) + 1))
            for name, get in METRICS.items():
                vals = {p: _mean(by[p], get) for p in policies}
                ratio = vals["program"] / vals["lamps"] if vals["lamps"] else math.nan
                cells = " | ".join(_fmt(vals[p]) for p in policies)
                print(f"| {name} | {cells} | {ratio:.2f} |", flush=True)
            rec = {p: _mean(by[p], lambda s: s.recomputed_tokens) for p in policies}
            print(
                "| recomputed tokens | "
                + " | ".join(_fmt(rec[p]) for p in policies)
                + f" | {rec['program'] / max(rec['lamps'], 1):.2f} |"
            )
            unstable = [f"{o.spec.policy}@{o.spec.seed}" for o in outs if not o.stable]
            print(f"\nunstable by the rule: {', '.join(unstable) or 'none'}")

    longctx = [w for w in workloads if w.startswith("longctx")]
    if "sensitivity" not in skip and longctx:
        w = longctx[0]
        qps = 0.9 * statistics.fmean(caps[(w, "lamps")])
        variants: list[tuple[str, tuple[tuple[str, Any], ...]]] = [
            ("true footprint, 0 % error", (("footprint_source", "oracle"),)),
            (
                "true × (1+e), 25 %",
                (("footprint_source", "oracle"), ("footprint_error", 0.25)),
            ),
            ("true × (1+e), 50 %", (("footprint_source", "oracle"), ("footprint_error", 0.5))),
            ("online history (default)", ()),
        ]
        specs = [
            Spec(w, "program", qps, s, WORKLOADS[w], options=opts, **base)
            for _, opts in variants
            for s in seeds
        ]
        outs = run_all(specs, args.jobs)
        lamps = run_all([Spec(w, "lamps", qps, s, WORKLOADS[w], **base) for s in seeds], args.jobs)
        lm, lp = _mean(lamps, lambda s: s.e2e.mean), _mean(lamps, lambda s: s.e2e.p99)
        print(f"\n## Sensitivity to footprint prediction error, {w} at {qps:.3g} programs/s\n")
        print("| footprint | E2E mean s | E2E P99 s | mean / lamps | P99 / lamps | stable |")
        print("|---|---:|---:|---:|---:|---|")
        for i, (label, _) in enumerate(variants):
            part = outs[i * len(seeds) : (i + 1) * len(seeds)]
            m, p = _mean(part, lambda s: s.e2e.mean), _mean(part, lambda s: s.e2e.p99)
            st = sum(o.stable for o in part)
            print(
                f"| {label} | {m:.1f} | {p:.1f} | {m / lm:.2f} | {p / lp:.2f} | {st}/{len(part)} |"
            )

    if "burst" not in skip and longctx:
        w = longctx[0]
        qps = 0.9 * statistics.fmean(caps[(w, "lamps")])
        burst = (WORKLOADS[w] / 2, 60.0)
        specs = [
            Spec(w, p, qps, s, WORKLOADS[w], burst=burst, **base)
            for p in ("program", "lamps")
            for s in seeds
        ]
        outs = run_all(specs, args.jobs)
        print(
            f"\n## Burst: {w} at {qps:.3g} programs/s, doubled for 60 s from t={burst[0]:.0f} s\n"
        )
        print("| policy | E2E mean s | E2E P99 s | E2E mean, burst arrivals | stable |")
        print("|---|---:|---:|---:|---|")
        for p in ("program", "lamps"):
            part = [o for o in outs if o.spec.policy == p]
            print(
                f"| {p} | {_mean(part, lambda s: s.e2e.mean):.1f} | "
                f"{_mean(part, lambda s: s.e2e.p99):.1f} | "
                f"{statistics.fmean(o.burst_e2e for o in part):.1f} | "
                f"{sum(o.stable for o in part)}/{len(part)} |"
            )
        first = next(o for o in outs if o.spec.policy == "program")
        assert first.trace is not None
        print(
            f"\nThreshold state, program, seed {first.spec.seed} (every 30 s around the burst):\n"
        )
        print("| t s | committed / budget | programs in flight | new programs held (cumulative) |")
        print("|---:|---:|---:|---:|")
        shown = set()
        for t, frac, flight, held in first.trace:
            mark = int(t // 30)
            if burst[0] - 120 <= t <= burst[0] + 300 and mark not in shown:
                shown.add(mark)
                print(f"| {t:.0f} | {frac:.2f} | {flight} | {held:,} |")
    print(f"\n(total wall {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
