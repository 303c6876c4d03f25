"""An adversarial workload: programs that lie in their hints, and tenants, one of them bursting.

Lies (``--lies``), told by a fraction of the programs (``--liar-fraction``) chosen per arrival
from the run's seed, and by every program of the first ``--liar-tenants`` tenants (lying
clients), so every policy and every lie kind meets the same liars:

- ``short``: every turn claims a 1-token output and an instant (0 s) tool;
- ``final``: every turn claims to be the final answer (no tool call);
- ``hog``: every turn claims a 100k-token output;
- ``spoof``: the program claims another agent's name (the agent whose programs are smallest on
  the trace), so per-agent statistics (``program``'s footprints, WAIT's types) see it as that
  agent;
- ``none``: nobody lies (the all-honest run the others are compared with).

The first three are claims about a turn and go through :class:`LyingPredictor`, a wrapper of the
run's predictor keyed by program; ``spoof`` is a claim about the program and relabels it.

Tenants (``--tenants N``): every arrival belongs to one of N tenants, drawn from the seed;
``--burst-tenant K --burst-factor F`` adds arrivals of tenant K at ``(F − 1)`` times its share of
the rate during the middle third of the arrival window (a swarm of sub-agents), so that tenant
sends F times its share while it bursts.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from lamps_agent.predictors.base import Outcome, Prediction, PredictionQuery, Predictor
from lamps_agent.program import Program
from lamps_agent.workloads.arrivals import Arrival, poisson_workload

LieKind = Literal["none", "short", "final", "hog", "spoof"]
LIE_KINDS: tuple[str, ...] = get_args(LieKind)
HOG_OUTPUT_TOKENS = 100_000.0


def lie_kind(text: str) -> LieKind:
    if text not in LIE_KINDS:
        raise ValueError(f"unknown lie {text!r}; valid: {', '.join(LIE_KINDS)}")
    return text  # type: ignore[return-value]


def tell(kind: LieKind, honest: Prediction) -> Prediction:
    """What a liar of ``kind`` claims instead of ``honest``."""
    if kind == "short":
        return dataclasses.replace(honest, output_tokens=1.0, tool_duration=0.0)
    if kind == "final":
        return dataclasses.replace(honest, tool=None, tool_duration=0.0, returned_tokens=0.0)
    if kind == "hog":
        return dataclasses.replace(honest, output_tokens=HOG_OUTPUT_TOKENS)
    return honest


class LyingPredictor(Predictor):
    """``inner``'s predictions, except for the programs in ``liars``, whose turns claim what a
    liar of ``kind`` would (:func:`tell`)."""

    def __init__(self, inner: Predictor, *, liars: Collection[str], kind: LieKind) -> None:
        self.inner = inner
        self.name = inner.name
        self.liars = frozenset(liars)
        self.kind = kind

    def predict(self, query: PredictionQuery) -> Prediction:
        honest = self.inner.predict(query)
        return tell(self.kind, honest) if query.program_id in self.liars else honest

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.inner.observe(query, outcome)


@dataclass(frozen=True, slots=True, kw_only=True)
class Adversary:
    """Who lies and who belongs to which tenant (module docstring)."""

    liar_fraction: float = 0.0
    tenants: int = 1
    liar_tenants: int = 0  # tenants t0..tK-1 lie in every program (a lying client)
    burst_tenant: int | None = None
    burst_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.liar_fraction <= 1:
            raise ValueError(f"--liar-fraction: must be in [0, 1], got {self.liar_fraction}")
        if self.tenants < 1:
            raise ValueError(f"--tenants: must be >= 1, got {self.tenants}")
        if not 0 <= self.liar_tenants <= self.tenants:
            raise ValueError(
                f"--liar-tenants: must be in [0, --tenants {self.tenants}], got {self.liar_tenants}"
            )
        if self.burst_tenant is not None and not 0 <= self.burst_tenant < self.tenants:
            raise ValueError(
                f"--burst-tenant: must be in [0, {self.tenants - 1}], got {self.burst_tenant}"
            )
        if not self.burst_factor >= 1:
            raise ValueError(f"--burst-factor: must be >= 1, got {self.burst_factor}")

    @property
    def active(self) -> bool:
        return self.liar_fraction > 0 or self.liar_tenants > 0 or self.tenants > 1

    @property
    def lies(self) -> bool:
        return self.liar_fraction > 0 or self.liar_tenants > 0


@dataclass(frozen=True, slots=True)
class Cast:
    """A run's arrivals with their roles: the liars' program ids, each program's tenant."""

    arrivals: list[Arrival]
    liars: frozenset[str]
    spoof_agent: str | None

    def tenant_of(self) -> dict[str, str | None]:
        return {a.program.program_id: a.program.tenant for a in self.arrivals}


def tenant_name(index: int) -> str:
    return f"t{index}"


def cast(
    adversary: Adversary,
    programs: Sequence[Program],
    arrivals: list[Arrival],
    *,
    qps: float,
    seed: int,
    lie: LieKind,
) -> Cast:
    """Give every arrival its own program id (``id@n``: a program drawn twice is two sessions),
    a tenant and, for a liar of ``spoof``, another agent's name; add the burst's arrivals."""
    arrivals = sorted([*arrivals, *_burst(adversary, programs, arrivals, qps, seed)], key=_time)
    roles = random.Random(f"liars-{seed}")
    tenants = random.Random(f"tenants-{seed}")
    spoof = _smallest_agent(programs)
    out, liars = [], set()
    for n, arrival in enumerate(arrivals):
        program = arrival.program
        pid = f"{program.program_id}@{n}"
        liar = roles.random() < adversary.liar_fraction
        drawn = tenants.randrange(adversary.tenants)
        tenant = program.tenant or tenant_name(drawn)  # a burst's arrival carries its tenant
        liar = liar or tenant in _lying_tenants(adversary)
        agent = program.agent
        if liar:
            liars.add(pid)
            if lie == "spoof":
                agent = spoof if spoof != program.agent else _other_agent(programs, spoof)
        relabelled = dataclasses.replace(program, program_id=pid, tenant=tenant, agent=agent)
        out.append(Arrival(arrival.time, relabelled))
    return Cast(arrivals=out, liars=frozenset(liars), spoof_agent=spoof)


def _lying_tenants(adversary: Adversary) -> set[str]:
    return {tenant_name(k) for k in range(adversary.liar_tenants)}


def _time(arrival: Arrival) -> float:
    return arrival.time


def _burst(
    adversary: Adversary,
    programs: Sequence[Program],
    arrivals: list[Arrival],
    qps: float,
    seed: int,
) -> list[Arrival]:
    """The bursting tenant's extra arrivals over the middle third of the arrival window."""
    k = adversary.burst_tenant
    if k is None or adversary.burst_factor <= 1 or not arrivals:
        return []
    end = arrivals[-1].time
    rate = (adversary.burst_factor - 1) * qps / adversary.tenants
    extra = poisson_workload(programs, qps=rate, seed=seed + 7919, duration=end / 3)
    tenant = tenant_name(k)
    return [Arrival(end / 3 + a.time, dataclasses.replace(a.program, tenant=tenant)) for a in extra]


def _agent_sizes(programs: Sequence[Program]) -> dict[str, float]:
    sizes: dict[str, list[float]] = {}
    for p in programs:
        last = p.segments[-1]
        sizes.setdefault(p.agent, []).append(float(last.prompt_tokens + last.output_tokens))
    return {agent: statistics.fmean(v) for agent, v in sizes.items()}


def _smallest_agent(programs: Sequence[Program]) -> str:
    sizes = _agent_sizes(programs)
    return min(sorted(sizes), key=sizes.__getitem__)


def _other_agent(programs: Sequence[Program], agent: str) -> str:
    sizes = _agent_sizes(programs)
    others = sorted((a for a in sizes if a != agent), key=sizes.__getitem__)
    return others[0] if others else agent
