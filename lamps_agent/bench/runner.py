"""Running grids of simulations: every (policy, predictor, qps) on the same arrivals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamps_agent.metrics import RunResult
from lamps_agent.policies import make_policy
from lamps_agent.predictors import DurationSource, make_predictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads.arrivals import poisson_workload

RECOMMENDED_POLICY = "lamps"
"""The policy the project recommends; plots that show one run default to it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    policy: str
    predictor: str
    qps: float


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    programs: Sequence[Program]
    trace_name: str
    preset: Preset
    qps: Sequence[float]
    policies: Sequence[str]
    predictors: Sequence[str] = ("oracle",)
    seed: int = 0
    num_programs: int | None = None
    duration: float | None = None
    policy_options: dict[str, Any] = field(default_factory=dict)
    hints: DurationSource | None = None
    timeline_for: RunSpec | None = None  # record KV use over time for this run

    def specs(self) -> list[RunSpec]:
        return [
            RunSpec(policy=pol, predictor=pred, qps=q)
            for q in self.qps
            for pol in self.policies
            for pred in self.predictors
        ]


def run_one(config: BenchConfig, spec: RunSpec) -> RunResult:
    """One simulation.  Arrivals depend only on (seed, qps), so every policy sees the same ones."""
    arrivals = poisson_workload(
        config.programs,
        qps=spec.qps,
        seed=config.seed,
        num_programs=config.num_programs,
        duration=config.duration,
    )
    predictor = make_predictor(spec.predictor, seed=config.seed, hints=config.hints)
    predictor_label = ran_predictor_label(spec.predictor, predictor.name)
    options = config.policy_options if spec.policy.startswith("lamps") else {}
    policy = make_policy(spec.policy, predictor=predictor, preset=config.preset, **options)
    sim = Simulator(
        preset=config.preset,
        policy=policy,
        arrivals=arrivals,
        record_timeline=spec == config.timeline_for,
    )
    return sim.run(
        RunLabels(
            policy=spec.policy,
            predictor=predictor_label,
            trace=config.trace_name,
            qps=spec.qps,
            seed=config.seed,
        )
    )


def ran_predictor_label(requested: str, ran: str) -> str:
    """The predictor label of a run: the requested spec, or ``requested→ran`` when the predictor
    fell back to another one (``learned`` without its extra or a saved model runs ``history``)."""
    return requested if requested.partition(":")[0] == ran else f"{requested}→{ran}"


def run_grid(
    config: BenchConfig, *, on_done: Callable[[RunSpec, RunResult], None] | None = None
) -> list[RunResult]:
    results = []
    for spec in config.specs():
        result = run_one(config, spec)
        results.append(result)
        if on_done is not None:
            on_done(spec, result)
    return results
