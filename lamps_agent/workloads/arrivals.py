"""Turning a trace into a timed workload: Poisson arrivals, run length in programs or seconds."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.program import Program


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    program: Program


def poisson_workload(
    programs: Sequence[Program],
    *,
    qps: float,
    seed: int = 0,
    num_programs: int | None = None,
    duration: float | None = None,
) -> list[Arrival]:
    """Programs arriving as a Poisson process of rate ``qps``.

    With neither ``num_programs`` nor ``duration``: every program once, in a seeded random order.
    Otherwise conversations are sampled with replacement until ``num_programs`` have arrived or
    the next arrival would come after ``duration`` seconds (whichever is given; both: the first).
    """
    if not programs:
        raise ValueError("the workload needs at least one program")
    if not qps > 0:
        raise ValueError(f"qps must be > 0, got {qps}")
    if num_programs is not None and num_programs < 1:
        raise ValueError("num_programs must be >= 1")
    if duration is not None and not duration > 0:
        raise ValueError("duration must be > 0")
    order_rng = random.Random(f"order-{seed}")
    time_rng = random.Random(f"arrivals-{seed}")
    if num_programs is None and duration is None:
        chosen = list(programs)
        order_rng.shuffle(chosen)
        limit = len(chosen)
    else:
        chosen = []
        limit = num_programs if num_programs is not None else 10**9
    arrivals: list[Arrival] = []
    now = 0.0
    while len(arrivals) < limit:
        now += time_rng.expovariate(qps)
        if duration is not None and now > duration:
            break
        program = chosen[len(arrivals)] if chosen else order_rng.choice(programs)
        arrivals.append(Arrival(now, program))
    return arrivals
