"""The contention-free bound: each program alone on the engine.

A program's bound is its E2E latency when it is the only program the engine serves: no queueing,
no other request's KV competing for memory, every step at batch size one.  It is simulated with the
same engine, cost model and preset as the runs it bounds, once per policy of the benchmark, and the
lowest is kept (alone, the policies differ only in what they do with a paused turn's KV, and the
best of them is the one no scheduler can beat on this engine).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lamps_agent.policies import make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program, Segment
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads.arrivals import Arrival


@dataclass(frozen=True, slots=True, kw_only=True)
class Alone:
    """One program's contention-free latencies (seconds)."""

    e2e: float
    engine: float  # e2e minus the program's own tool time


def alone_latency(program: Program, *, preset: Preset, policy: str) -> Alone:
    """``program`` alone on the engine under ``policy`` (oracle predictions)."""
    sim = Simulator(
        preset=preset,
        policy=make_policy(policy, predictor=make_predictor("oracle"), preset=preset),
        arrivals=[Arrival(0.0, program)],
    )
    (m,) = sim.run(RunLabels(policy=policy, predictor="oracle")).requests
    return Alone(e2e=m.e2e, engine=m.e2e - m.tool_time)


def best_alone(program: Program, *, preset: Preset, policies: Sequence[str]) -> Alone:
    """The lowest of ``program``'s latencies alone under each of ``policies``."""
    runs = [alone_latency(program, preset=preset, policy=p) for p in policies]
    return min(runs, key=lambda a: a.e2e)


class ContentionFreeBound:
    """The bound of each program, computed once per distinct program and cached."""

    def __init__(self, *, preset: Preset, policies: Sequence[str]) -> None:
        if not policies:
            raise ValueError("the bound needs at least one policy")
        self.preset = preset
        self.policies = tuple(policies)
        # Keyed by the turns: alone, a program's name, agent and tenant change nothing (an
        # adversarial run gives every arrival a name of its own).
        self._cache: dict[tuple[Segment, ...], Alone] = {}

    def of(self, program: Program) -> Alone:
        hit = self._cache.get(program.segments)
        if hit is None:
            hit = self._cache[program.segments] = best_alone(
                program, preset=self.preset, policies=self.policies
            )
        return hit

    def learn(self, known: Mapping[tuple[Segment, ...], Alone]) -> None:
        """Take bounds computed elsewhere (:func:`best_alone` on the same preset and policies,
        e.g. in other processes) into the cache."""
        self._cache.update(known)

    def mean_e2e(self, programs: Iterable[Program]) -> float:
        return statistics.fmean(self.of(p).e2e for p in programs)

    def mean_engine(self, programs: Iterable[Program]) -> float:
        return statistics.fmean(self.of(p).engine for p in programs)
