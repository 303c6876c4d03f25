"""Running fleets: replicas × routing policies × arrival rate per replica, on one workload.

The load is stated per replica: a fleet of N replicas at ``qps_per_replica`` q receives programs
at N·q for ``duration`` seconds, so every fleet size sees the same load per replica.  The
replicas share one predictor (a fleet shares one tool registry) and each has its own policy
instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lamps_agent.bench.runner import ran_predictor_label
from lamps_agent.metrics import RunLabels
from lamps_agent.policies import make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.sim.fleet import Fleet, FleetResult
from lamps_agent.sim.routing import AffinitySpillRouter, make_router
from lamps_agent.workloads.arrivals import poisson_workload


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    replicas: int
    routing: str
    qps_per_replica: float


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    programs: Sequence[Program]
    trace_name: str
    preset: Preset
    duration: float  # seconds of arrivals
    policy: str = "lamps"
    predictor: str = "oracle"
    seed: int = 0
    spill_threshold: float = 0.1  # affinity-spill: fraction of one replica's KV tokens
    policy_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise ValueError(f"duration must be > 0, got {self.duration}")


def run_fleet(config: FleetConfig, spec: FleetSpec) -> FleetResult:
    """One fleet run.  Arrivals depend only on (seed, replicas × rate, duration), so every
    routing policy sees the same ones."""
    if spec.replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {spec.replicas}")
    if not spec.qps_per_replica > 0:
        raise ValueError(f"qps per replica must be > 0, got {spec.qps_per_replica}")
    qps = spec.replicas * spec.qps_per_replica
    arrivals = poisson_workload(
        config.programs, qps=qps, seed=config.seed, duration=config.duration
    )
    predictor = make_predictor(config.predictor, seed=config.seed)
    options = config.policy_options if config.policy.startswith("lamps") else {}
    policies = [
        make_policy(config.policy, predictor=predictor, preset=config.preset, **options)
        for _ in range(spec.replicas)
    ]
    router_options: dict[str, Any] = {}
    if spec.routing == AffinitySpillRouter.name:
        router_options["spill_threshold"] = config.spill_threshold
    router = make_router(
        spec.routing, replicas=spec.replicas, preset=config.preset, **router_options
    )
    fleet = Fleet(preset=config.preset, policies=policies, router=router, arrivals=arrivals)
    labels = RunLabels(
        policy=config.policy,
        predictor=ran_predictor_label(config.predictor, predictor.name),
        trace=config.trace_name,
        qps=spec.qps_per_replica,
        seed=config.seed,
    )
    return fleet.run(labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetRow:
    """One fleet run as a table row."""

    replicas: int
    routing: str
    qps_per_replica: float
    programs: int
    rejected: int
    e2e_mean: float
    e2e_p99: float
    engine_mean: float  # E2E minus tool time: what scheduling and routing control
    recomputed_tokens: int
    moved_tokens: int  # KV released because a session moved (a prefix hit may take some back)
    moves: int
    turns: int
    preemptions: int
    busiest_replica_busy: float  # the busiest replica's computing time / the run's makespan

    @classmethod
    def of(cls, spec: FleetSpec, result: FleetResult) -> FleetRow:
        s = result.summary
        span = max(s.makespan, 1e-9)
        return cls(
            replicas=spec.replicas,
            routing=spec.routing,
            qps_per_replica=spec.qps_per_replica,
            programs=s.num_requests,
            rejected=s.rejected,
            e2e_mean=s.e2e.mean,
            e2e_p99=s.e2e.p99,
            engine_mean=s.engine_time.mean,
            recomputed_tokens=s.recomputed_tokens,
            moved_tokens=result.dropped_tokens,
            moves=result.moves,
            turns=sum(r.turns for r in result.replicas),
            preemptions=s.preemptions,
            busiest_replica_busy=max(r.busy_s for r in result.replicas) / span,
        )
