"""Running grids of simulations: every (policy, predictor, qps, seed) on the same arrivals, each
measured under the steady-state protocol (:mod:`lamps_agent.bench.protocol`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamps_agent.bench.adversary import Adversary, Cast, LyingPredictor, cast, lie_kind
from lamps_agent.bench.bound import ContentionFreeBound
from lamps_agent.bench.protocol import Stability, Window, judge_stability
from lamps_agent.metrics import (
    EngineCounters,
    RequestMetrics,
    RunLabels,
    RunResult,
    RunSummary,
    summarize,
)
from lamps_agent.policies import make_policy
from lamps_agent.predictors import DurationSource, Predictor, make_predictor
from lamps_agent.predictors.calibrated import CalibratedPredictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.sim import Simulator
from lamps_agent.steps import StepRecord
from lamps_agent.workloads.arrivals import Arrival, poisson_workload

RECOMMENDED_POLICY = "lamps"
"""The policy the project recommends; plots that show one run default to it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    policy: str
    predictor: str
    qps: float
    seed: int | None = None  # None: the config's seed
    lie: str = "none"  # what the config's liars claim (lamps_agent.bench.adversary)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    programs: Sequence[Program]
    trace_name: str
    preset: Preset
    qps: Sequence[float]
    policies: Sequence[str]
    predictors: Sequence[str] = ("oracle",)
    seed: int = 0
    num_seeds: int = 1  # seeds seed, seed + 1, ...
    num_programs: int | None = None
    duration: float | None = None  # arrivals in [0, duration]
    warmup: float = 0.0  # arrivals before this are simulated, not measured
    policy_options: dict[str, Any] = field(default_factory=dict)  # for the lamps variants
    options_by_policy: dict[str, dict[str, Any]] = field(default_factory=dict)  # --policy-options
    hints: DurationSource | None = None
    timeline_for: RunSpec | None = None  # record KV use over time for this run
    adversary: Adversary = field(default_factory=Adversary)  # liars and tenants
    lies: Sequence[str] = ("none",)
    calibrate: bool = False  # hints are the clients' word: discount them by their calibration
    fair_share: bool = (
        True  # each tenant its share of KV and seats (lamps_agent.scheduler.fair_share)
    )
    tenant_weights: Mapping[str, float] = field(default_factory=dict)  # 1 for a tenant not named

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_seeds)]

    def specs(self) -> list[RunSpec]:
        return [
            RunSpec(policy=pol, predictor=pred, qps=q, seed=seed, lie=lie)
            for q in self.qps
            for pol in self.policies
            for pred in self.predictors
            for seed in self.seeds
            for lie in self.lies
        ]


def arrivals_for(config: BenchConfig, qps: float, seed: int) -> list[Arrival]:
    """The run's arrivals: they depend only on (seed, qps), so every policy sees the same ones."""
    return poisson_workload(
        config.programs,
        qps=qps,
        seed=seed,
        num_programs=config.num_programs,
        duration=config.duration,
    )


def cast_for(config: BenchConfig, spec: RunSpec) -> Cast:
    """The run's arrivals with their liars and tenants (every arrival honest, in no tenant,
    without an adversary)."""
    seed = seed_of(config, spec)
    arrivals = arrivals_for(config, spec.qps, seed)
    if not config.adversary.active:
        return Cast(arrivals=arrivals, liars=frozenset(), spoof_agent=None)
    return cast(
        config.adversary,
        config.programs,
        arrivals,
        qps=spec.qps,
        seed=seed,
        lie=lie_kind(spec.lie),
    )


def run_predictor(config: BenchConfig, spec: RunSpec, liars: frozenset[str]) -> Predictor:
    """The run's predictor: the liars' claims over the predictor asked for, checked against
    behaviour when ``config.calibrate``."""
    seed = seed_of(config, spec)
    predictor = make_predictor(spec.predictor, seed=seed, hints=config.hints)
    if liars and spec.lie in ("short", "final", "hog"):
        predictor = LyingPredictor(predictor, liars=liars, kind=lie_kind(spec.lie))
    if config.calibrate:
        predictor = CalibratedPredictor(predictor, prior=config.hints)
    return predictor


def run_one(
    config: BenchConfig,
    spec: RunSpec,
    arrivals: list[Arrival] | None = None,
    *,
    liars: frozenset[str] = frozenset(),
    steps: list[StepRecord] | None = None,
) -> RunResult:
    """One simulation, every arrival to completion (warm-up and drain included); with ``steps``
    (a list), every iteration's record is appended to it (:mod:`lamps_agent.steps`)."""
    seed = seed_of(config, spec)
    if arrivals is None:
        roles = cast_for(config, spec)
        arrivals, liars = roles.arrivals, roles.liars
    predictor = run_predictor(config, spec, liars)
    predictor_label = ran_predictor_label(spec.predictor, predictor.name)
    if spec.lie != "none":  # the table's rows keep the lies apart
        predictor_label = f"{predictor_label} lie:{spec.lie}"
    options = dict(config.policy_options) if spec.policy.startswith("lamps") else {}
    options.update(config.options_by_policy.get(spec.policy, {}))
    policy = make_policy(spec.policy, predictor=predictor, preset=config.preset, **options)
    sim = Simulator(
        preset=config.preset,
        policy=policy,
        arrivals=arrivals,
        record_timeline=spec == config.timeline_for,
        record_steps=steps is not None,
        fair_share=config.fair_share,
        tenant_weights=config.tenant_weights,
    )
    result = sim.run(
        RunLabels(
            policy=spec.policy,
            predictor=predictor_label,
            trace=config.trace_name,
            qps=spec.qps,
            seed=seed,
        )
    )
    if steps is not None and sim.steps is not None:
        steps.extend(sim.steps)
    return result


def seed_of(config: BenchConfig, spec: RunSpec) -> int:
    return spec.seed if spec.seed is not None else config.seed


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One run under the protocol: the summary covers the measured programs only."""

    spec: RunSpec
    summary: RunSummary
    window: Window
    simulated: int  # programs that arrived (warm-up included)
    measured: int
    stability: Stability
    alone_e2e: float  # mean contention-free E2E of the measured programs
    result: RunResult  # the whole run (every program), for plots
    liars: frozenset[str] = frozenset()  # program ids of the liars (an adversarial run)
    tenants: dict[str, str | None] = field(default_factory=dict)  # program id -> tenant


def window_of(config: BenchConfig, arrivals: list[Arrival]) -> Window:
    """``[warmup, duration]``; a run sized in programs ends at its last arrival."""
    end = config.duration if config.duration is not None else arrivals[-1].time
    return Window(warmup=config.warmup, end=end)


def measured_summary(
    result: RunResult, measured: Sequence[RequestMetrics], *, seed: int = 0
) -> RunSummary:
    """The summary of a run's ``measured`` programs: their own latencies, recomputed tokens and
    preemptions; the engine-wide counters (swaps, waste, peaks, iterations) of the whole run."""
    full = result.summary
    counters = EngineCounters(
        recomputed_tokens=sum(m.recomputed_tokens for m in measured),
        swapped_bytes=full.swapped_bytes,
        memory_waste_token_s=full.memory_waste_token_s,
        peak_kv_blocks=full.peak_kv_blocks,
        peak_kv_fraction=full.peak_kv_fraction,
        iterations=full.iterations,
        preemptions=sum(m.preemptions for m in measured),
        pins_released=full.pins_released,
        swap_fallbacks=full.swap_fallbacks,
        rejected=full.rejected,
    )
    labels = RunLabels(
        policy=full.policy, predictor=full.predictor, trace=full.trace, qps=full.qps, seed=seed
    )
    return summarize(measured, labels=labels, preset=full.preset, counters=counters)


def measure(
    config: BenchConfig,
    spec: RunSpec,
    result: RunResult,
    arrivals: list[Arrival],
    bound: ContentionFreeBound,
) -> Point:
    """Cut a finished run to its measured window, judge its stability and attach the bound."""
    window = window_of(config, arrivals)
    measured = window.measured(result.requests)
    if not measured:
        raise ValueError(
            f"no program arrived in the measured window [{window.warmup:g}, {window.end:g}] s "
            f"at qps {spec.qps:g}: lengthen --duration or shorten --warmup"
        )
    programs = {a.program.program_id: a.program for a in arrivals}
    alone = [bound.of(programs[m.program_id]) for m in measured]
    summary = measured_summary(result, measured, seed=seed_of(config, spec))
    unloaded_engine = sum(a.engine for a in alone) / len(alone)
    return Point(
        spec=spec,
        summary=summary,
        window=window,
        simulated=len(arrivals),
        measured=len(measured),
        stability=judge_stability(
            measured,
            window,
            unloaded_engine=unloaded_engine,
            run=result.requests,
            alone_e2e={m.program_id: bound.of(programs[m.program_id]).e2e for m in result.requests},
        ),
        alone_e2e=sum(a.e2e for a in alone) / len(alone),
        result=result,
    )


def run_point(config: BenchConfig, spec: RunSpec, bound: ContentionFreeBound) -> Point:
    roles = cast_for(config, spec)
    result = run_one(config, spec, roles.arrivals, liars=roles.liars)
    point = measure(config, spec, result, roles.arrivals, bound)
    if not config.adversary.active:
        return point
    return dataclasses.replace(point, liars=roles.liars, tenants=roles.tenant_of())


def ran_predictor_label(requested: str, ran: str) -> str:
    """The predictor label of a run: the requested spec, or ``requested→ran`` when the predictor
    fell back to another one (``learned`` without its extra or a saved model runs ``history``)."""
    return requested if requested.partition(":")[0] == ran else f"{requested}→{ran}"


def make_bound(config: BenchConfig) -> ContentionFreeBound:
    return ContentionFreeBound(preset=config.preset, policies=config.policies)


def run_grid(
    config: BenchConfig,
    *,
    bound: ContentionFreeBound | None = None,
    on_done: Callable[[RunSpec, Point], None] | None = None,
) -> list[Point]:
    bound = bound or make_bound(config)
    points = []
    for spec in config.specs():
        point = run_point(config, spec, bound)
        points.append(point)
        if on_done is not None:
            on_done(spec, point)
    return points
