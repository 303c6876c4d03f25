"""The program-aware policy's sensitivity and burst studies, in the simulator.

    python benchmarks/program_policy.py --workload longctx:coding --qps 0.06 --seeds 0,1,2

Capacity and the fixed-rate comparisons come from ``lamps-agent bench`` (the steady-state
protocol, docs/benchmarks.md "Program-aware policy").  This script runs, on the
``h100-llama3-8b`` preset at ``--qps`` (a rate where the policy's program-level rules are engaged:
below about half the KV in use it schedules as ``lamps-aging`` and there is nothing to perturb):

1. sensitivity of ``program`` to footprint prediction error (true footprint × (1 + e),
   e ~ N(0, 0 / 25 / 50 %), and the online history predictor), against ``lamps``;
2. a burst — the arrival rate doubles for one minute in the middle of the window — with the
   policy's state over time (fluid load, engaged or not, committed footprint, programs in
   flight, new programs held).

Arrivals: Poisson for a fixed window (1,800 s for the long-context workloads), sampled with
replacement from a seeded pool.  Stability and the measured programs follow the bench's protocol
(:mod:`lamps_agent.bench.protocol`): the first ``WARMUP_S`` seconds' arrivals are simulated, not
measured; a run is unstable when the engine time of the last third's arrivals grew past the
rule's tolerance over the first third's.  Deterministic: the same seeds give the same tables.
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

from lamps_agent.bench.protocol import Window, judge_stability
from lamps_agent.bench.runner import measured_summary
from lamps_agent.metrics import RunSummary
from lamps_agent.policies import make_policy
from lamps_agent.policies.program import Footprint, FootprintPredictor, ProgramPolicy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program
from lamps_agent.request import Request
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import poisson_workload
from lamps_agent.workloads.arrivals import Arrival
from lamps_agent.workloads.longctx import generate_longctx

WINDOW_S = 1800.0  # arrivals for this long
WARMUP_S = 180.0  # the first arrivals, not measured: 2x longctx:coding's unloaded mean E2E (89 s)
PRESET = "h100-llama3-8b"


@dataclass(frozen=True)
class Spec:
    workload: str
    policy: str
    qps: float
    seed: int
    preset_overrides: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    burst: tuple[float, float] | None = None  # (start s, length s): the rate doubles
    # None: the policy's own footprint predictor (online history); a number e: the simulator's
    # true footprint × (1 + e), e ~ N(0, that) per program (TrueFootprint).
    true_footprint_error: float | None = None


class TrueFootprint(FootprintPredictor):
    """The sensitivity study's footprint: the simulator's truth (the program's last context,
    its turns left), its growth scaled by ``1 + e`` with ``e ~ N(0, error)`` clipped at -90 %,
    one draw per program and request (seeded by ``seed``)."""

    def __init__(self, *, error: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= error < 5:
            raise ValueError("error must be in [0, 5)")
        self.error = error
        self.seed = seed

    def for_request(self, req: Request) -> Footprint:
        context = req.segment.prompt_tokens
        segs = req.program.segments
        last = segs[-1]
        remaining = len(segs) - req.seg_index
        peak = float(last.prompt_tokens + last.output_tokens)
        fp = Footprint(peak=peak, remaining_turns=remaining, growth=(peak - context) / remaining)
        if self.error > 0:
            rng = random.Random(f"footprint-{self.seed}-{req.program.program_id}-{req.request_id}")
            e = max(rng.gauss(0.0, self.error), -0.9)
            grown = max(fp.peak - context, 0.0) * (1 + e)
            fp = Footprint(
                peak=context + grown, remaining_turns=fp.remaining_turns, growth=fp.growth * (1 + e)
            )
        return fp


@lru_cache(maxsize=8)
def _pool(workload: str, seed: int) -> tuple[Program, ...]:
    kinds = workload.partition(":")[2] or "mix"
    return tuple(generate_longctx(1000, kinds=kinds, seed=seed))


@lru_cache(maxsize=4)
def _preset(overrides: tuple[tuple[str, str], ...]) -> Preset:
    return load_preset(PRESET, overrides=dict(overrides))


def _arrivals(spec: Spec) -> list[Arrival]:
    pool = _pool(spec.workload, spec.seed)
    if spec.burst is None:
        return poisson_workload(pool, qps=spec.qps, seed=spec.seed, duration=WINDOW_S)
    # Thinning: a Poisson process at twice the rate, every second arrival kept outside the burst.
    start, length = spec.burst
    base = poisson_workload(pool, qps=2 * spec.qps, seed=spec.seed, duration=WINDOW_S)
    keep = random.Random(f"burst-{spec.seed}")
    return [a for a in base if start <= a.time < start + length or keep.random() < 0.5]


@dataclass(frozen=True)
class Sample:
    """The policy's state at one moment."""

    t: float
    load: float  # time-averaged KV use / capacity
    engaged: bool
    committed: float  # committed footprint / budget, every program in flight
    resident: float  # the part the gate counts (KV on the GPU) / budget
    in_flight: int
    held: int  # new programs refused so far


@dataclass
class Outcome:
    spec: Spec
    summary: RunSummary  # over the measured programs
    stable: bool
    trace: list[Sample] | None = None
    burst_e2e: float = math.nan  # mean E2E of the programs that arrived during the burst


class _Recording(ProgramPolicy):
    """The program policy, recording its state once per simulated second."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.samples: list[Sample] = []
        self._next = 0.0

    def admission_gate(self):  # type: ignore[no-untyped-def]
        gate = super().admission_gate()
        now = self.view.now
        if now >= self._next:
            self._next = math.floor(now) + 1.0
            self.samples.append(
                Sample(
                    t=now,
                    load=self.load,
                    engaged=self.engaged,
                    committed=self.committed / self.budget_tokens,
                    resident=self.resident_commitment() / self.budget_tokens,
                    in_flight=len(self.in_flight),
                    held=self.counters_held,
                )
            )
        return gate


def run(spec: Spec) -> Outcome:
    preset = _preset(spec.preset_overrides)
    arrivals = _arrivals(spec)
    predictor = make_predictor("oracle")
    options = dict(spec.options)
    if spec.true_footprint_error is not None:
        options["footprint"] = TrueFootprint(error=spec.true_footprint_error)
    if spec.policy == "program" and spec.burst is not None:
        policy: Any = _Recording(predictor=predictor, preset=preset, **options)
    else:
        policy = make_policy(spec.policy, predictor=predictor, preset=preset, **options)
    labels = RunLabels(policy=spec.policy, predictor="oracle", trace=spec.workload, qps=spec.qps)
    result = Simulator(preset=preset, policy=policy, arrivals=arrivals).run(labels)
    window = Window(warmup=WARMUP_S, end=WINDOW_S)
    measured = window.measured(result.requests)
    summary = measured_summary(result, measured, seed=spec.seed)
    stable = judge_stability(measured, window).stable
    trace = policy.samples if isinstance(policy, _Recording) else None
    burst_e2e = math.nan
    if spec.burst is not None:
        start, length = spec.burst
        during = [r.e2e for r in result.requests if start <= r.arrival < start + length]
        burst_e2e = statistics.fmean(during) if during else math.nan
    return Outcome(spec, summary, stable, trace, burst_e2e)


def run_all(specs: Sequence[Spec], jobs: int) -> list[Outcome]:
    if jobs <= 1:
        return [run(s) for s in specs]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, specs))


def _mean(outs: list[Outcome], get: Callable[[RunSummary], float]) -> float:
    return statistics.fmean(get(o.summary) for o in outs)


def _stable(outs: list[Outcome]) -> str:
    return f"{sum(o.stable for o in outs)}/{len(outs)}"


def sensitivity(
    workload: str, qps: float, seeds: list[int], base: dict[str, Any], jobs: int
) -> None:
    variants: list[tuple[str, float | None]] = [
        ("true footprint, 0 % error", 0.0),
        ("true × (1+e), 25 %", 0.25),
        ("true × (1+e), 50 %", 0.5),
        ("online history (default)", None),
    ]
    specs = [
        Spec(workload, "program", qps, s, true_footprint_error=error, **base)
        for _, error in variants
        for s in seeds
    ]
    specs += [Spec(workload, "lamps", qps, s, **base) for s in seeds]
    outs = run_all(specs, jobs)
    lamps = outs[len(variants) * len(seeds) :]
    lm, lp = _mean(lamps, lambda s: s.e2e.mean), _mean(lamps, lambda s: s.e2e.p99)
    print(f"\n## Sensitivity to footprint prediction error, {workload} at {qps:.3g} programs/s\n")
    print("| footprint | E2E mean s | E2E P99 s | mean / lamps | P99 / lamps | stable |")
    print("|---|---:|---:|---:|---:|---|")
    for i, (label, _) in enumerate(variants):
        part = outs[i * len(seeds) : (i + 1) * len(seeds)]
        m, p = _mean(part, lambda s: s.e2e.mean), _mean(part, lambda s: s.e2e.p99)
        print(f"| {label} | {m:.1f} | {p:.1f} | {m / lm:.2f} | {p / lp:.2f} | {_stable(part)} |")
    print(f"| lamps | {lm:.1f} | {lp:.1f} | 1.00 | 1.00 | {_stable(lamps)} |", flush=True)


def burst(workload: str, qps: float, seeds: list[int], base: dict[str, Any], jobs: int) -> None:
    window = (WINDOW_S / 2, 60.0)
    specs = [
        Spec(workload, p, qps, s, burst=window, **base) for p in ("program", "lamps") for s in seeds
    ]
    outs = run_all(specs, jobs)
    print(
        f"\n## Burst: {workload} at {qps:.3g} programs/s, doubled for 60 s from t = {window[0]:.0f} s\n"
    )
    print("| policy | E2E mean s | E2E P99 s | E2E mean, burst arrivals | stable |")
    print("|---|---:|---:|---:|---|")
    for p in ("program", "lamps"):
        part = [o for o in outs if o.spec.policy == p]
        print(
            f"| {p} | {_mean(part, lambda s: s.e2e.mean):.1f} | "
            f"{_mean(part, lambda s: s.e2e.p99):.1f} | "
            f"{statistics.fmean(o.burst_e2e for o in part):.1f} | {_stable(part)} |"
        )
    first = next(o for o in outs if o.spec.policy == "program")
    assert first.trace is not None
    print(f"\nThe policy's state, program, seed {first.spec.seed} (every 30 s around the burst):\n")
    print(
        "| t s | KV load (time-averaged) | engaged | committed / budget, all in flight "
        "| counted by the gate (KV on the GPU) / budget | programs in flight "
        "| new programs held (cumulative refusals) |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    shown = set()
    for x in first.trace:
        mark = int(x.t // 30)
        if window[0] - 120 <= x.t <= window[0] + 300 and mark not in shown:
            shown.add(mark)
            print(
                f"| {x.t:.0f} | {x.load:.2f} | {'yes' if x.engaged else 'no'} | "
                f"{x.committed:.2f} | {x.resident:.2f} | {x.in_flight} | {x.held:,} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=["host_swap_gb=256"],
        metavar="KEY=VALUE",
        help="preset override (default host_swap_gb=256: one H100's share of a server's RAM)",
    )
    parser.add_argument("--workload", default="longctx:coding", help="a longctx workload")
    parser.add_argument("--qps", type=float, required=True, help="arrival rate (programs/s)")
    parser.add_argument("--skip", default="", help="sections to skip: sensitivity,burst")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    skip = set(args.skip.split(","))
    workload, qps = args.workload, args.qps
    if not workload.startswith("longctx"):
        parser.error(f"--workload: a longctx workload, got {workload!r}")
    if not (math.isfinite(qps) and qps > 0):
        parser.error(f"--qps must be > 0, got {qps}")
    overrides = tuple(tuple(s.split("=", 1)) for s in args.set)
    base: dict[str, Any] = {"preset_overrides": overrides}
    started = time.perf_counter()
    print(f"preset {PRESET}, overrides {dict(overrides)}, seeds {seeds}, oracle predictor")
    print(f"arrivals for {WINDOW_S:g} s, the first {WARMUP_S:g} s not measured", flush=True)
    if "sensitivity" not in skip:
        sensitivity(workload, qps, seeds, base, args.jobs)
    if "burst" not in skip:
        burst(workload, qps, seeds, base, args.jobs)
    print(f"\n(total wall {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
