"""A fleet of simulated engine replicas behind a router, on one clock.

Each replica is a :class:`~lamps_agent.sim.engine.Simulator` of its own — a core
:class:`~lamps_agent.scheduler.Scheduler` with its own KV memory and policy, on the same preset —
stepped here in time order instead of by its own loop.  A replica is *busy* until the iteration
it started ends (its own clock), so an iteration on one replica never holds up the others.

One event order for the whole fleet: program arrivals and tool returns (one heap), and each
busy replica's end of iteration (another heap).  At equal times events come first, as in the
single simulator, which absorbs every event due before it schedules.  A :mod:`router
<lamps_agent.sim.routing>` places every turn when it becomes known — a program's first turn on
arrival, each later turn when its tool returns — and the turn joins that replica's inbox, which
the replica absorbs at its next step (arrivals first, then tool returns, as the simulator does).
A replica with nothing to do sleeps until a turn is routed to it; one whose work cannot advance
(memory held by pins, a gate holding requests) wakes at every event, as the simulator jumps to the
next event.

A turn routed away from the replica that ran the previous one moves its session: the KV still
held there (a pin, or a host copy) is released at once (:meth:`Scheduler.release_paused`) and the
turn recomputes its whole context on the new replica.  With one replica and any router, the run
is the single simulator's, exactly (tested).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from lamps_agent.errors import SimulationError
from lamps_agent.metrics import EngineCounters, RunLabels, RunResult, RunSummary, summarize
from lamps_agent.policies.base import Policy
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import Request, RequestState
from lamps_agent.scheduler import Scheduler
from lamps_agent.sim.engine import Simulator, StepStatus
from lamps_agent.sim.routing import ReplicaLoad, Router, Turn
from lamps_agent.workloads.arrivals import Arrival

log = logging.getLogger(__name__)

S = RequestState


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaCounters:
    """What one replica did over a run, beside the fleet's summary."""

    index: int
    turns: int  # turns routed here
    moved_in: int  # turns whose previous turn ran on another replica
    moved_out: int  # sessions that left with their next turn
    dropped_tokens: int  # KV tokens released here because the session moved (recomputed there)
    recomputed_tokens: int  # every recompute here: discards, preemptions, moves
    finished: int  # programs whose last turn ran here
    iterations: int
    busy_s: float  # simulated seconds spent computing iterations
    peak_kv_fraction: float


@dataclass(frozen=True, slots=True)
class FleetResult:
    """The fleet's run as one engine's (:class:`RunResult`), its router, and each replica."""

    run: RunResult
    routing: str
    replicas: tuple[ReplicaCounters, ...]
    placements: Mapping[int, tuple[int, ...]]  # request id → the replica of each of its turns

    @property
    def summary(self) -> RunSummary:
        return self.run.summary

    @property
    def moves(self) -> int:
        return sum(r.moved_in for r in self.replicas)

    @property
    def dropped_tokens(self) -> int:
        return sum(r.dropped_tokens for r in self.replicas)


@dataclass(slots=True, eq=False)
class _Replica:
    """One engine of the fleet: a simulator driven step by step, and its inbox."""

    index: int
    sim: Simulator
    load: ReplicaLoad
    arrivals: list[Request] = field(default_factory=list)
    returns: list[tuple[Request, Outcome]] = field(default_factory=list)
    busy: bool = False  # an end of iteration is in the heap
    turns: int = 0
    moved_in: int = 0
    moved_out: int = 0
    dropped_tokens: int = 0
    finished: int = 0
    busy_s: float = 0.0

    def wake(self, now: float) -> None:
        """Bring a sleeping replica's clock to ``now`` (the simulator's jump to an event)."""
        self.sim.advance_to(now)


class Fleet:
    """Replicas of one preset, each with its own policy instance, behind one router."""

    def __init__(
        self,
        *,
        preset: Preset,
        policies: Sequence[Policy],
        router: Router,
        arrivals: Sequence[Arrival],
    ) -> None:
        if not policies:
            raise ValueError("a fleet needs at least one replica (one policy per replica)")
        if len({id(p) for p in policies}) != len(policies):
            raise ValueError("every replica needs its own policy instance")
        if router.replicas != len(policies):
            raise ValueError(
                f"the router was built for {router.replicas} replicas, the fleet has "
                f"{len(policies)}"
            )
        if any(b.time < a.time for a, b in itertools.pairwise(arrivals)):
            raise ValueError("arrivals must be sorted by time")
        self.preset = preset
        self.router = router
        self.arrivals = arrivals
        self.replicas = [
            _Replica(
                index=i,
                sim=Simulator(preset=preset, policy=policy, arrivals=()),
                load=ReplicaLoad(index=i),
            )
            for i, policy in enumerate(policies)
        ]
        self._loads = [r.load for r in self.replicas]
        self._placed: dict[int, list[int]] = {}  # request id → the replica of each turn
        self._events: list[tuple[float, int, Request]] = []  # tool returns
        self._event_seq = itertools.count()
        self._ready: list[tuple[float, int]] = []  # busy replicas: (end of iteration, index)
        self._stalled: list[_Replica] = []  # work that could not advance: wake at the next event
        self._next_arrival = 0
        self._finished = 0
        self._rejected = 0

    @property
    def schedulers(self) -> list[Scheduler]:
        """Each replica's scheduler, by index (to inspect; the fleet drives them)."""
        return [r.sim.scheduler for r in self.replicas]

    @property
    def loads(self) -> list[ReplicaLoad]:
        """Each replica's load as the router sees it, by index."""
        return list(self._loads)

    # -- the main loop -------------------------------------------------------------------
    def run(self, labels: RunLabels) -> FleetResult:
        total = len(self.arrivals)
        for replica in self.replicas:  # every replica decides at t = 0, as the simulator does
            self._make_ready(replica, 0.0)
        while self._finished + self._rejected < total:
            event_at = self._next_event_time()
            if self._ready and (event_at is None or self._ready[0][0] < event_at):
                _, index = heapq.heappop(self._ready)
                self._step(self.replicas[index])
            elif event_at is not None:
                self._next_event(event_at)
            else:
                raise SimulationError(self._stuck_message())
        return self._result(labels)

    def _next_event_time(self) -> float | None:
        arrival = (
            self.arrivals[self._next_arrival].time
            if self._next_arrival < len(self.arrivals)
            else None
        )
        tool = self._events[0][0] if self._events else None
        if arrival is None:
            return tool
        return arrival if tool is None else min(arrival, tool)

    def _next_event(self, at: float) -> None:
        """Route the next arrival or tool return (arrivals first at equal times) and wake the
        replicas whose work was stalled."""
        stalled, self._stalled = self._stalled, []
        for replica in stalled:
            self._make_ready(replica, at)
        if self._next_arrival < len(self.arrivals) and self.arrivals[self._next_arrival].time == at:
            self._arrive(self._next_arrival, self.arrivals[self._next_arrival])
            self._next_arrival += 1
        else:
            _, _, req = heapq.heappop(self._events)
            self._tool_returned(req, at)

    def _make_ready(self, replica: _Replica, at: float) -> None:
        if replica.busy:
            return
        replica.wake(at)
        replica.busy = True
        heapq.heappush(self._ready, (replica.sim.now, replica.index))

    def _step(self, replica: _Replica) -> None:
        """One step of ``replica`` at its clock, after its inbox (the simulator's loop body)."""
        replica.busy = False
        sim = replica.sim
        self._absorb(replica)
        step = sim.step()
        if step.status is StepStatus.IDLE:
            return  # asleep until a turn is routed here
        if step.status is StepStatus.BLOCKED:
            self._stalled.append(replica)  # nothing can advance until an event
            return
        replica.busy_s += step.duration
        load = replica.load
        for req in (*step.finished, *step.tool_calls):
            load.requests -= 1
            load.tokens -= req.segment.prompt_tokens
        replica.finished += len(step.finished)
        self._finished += len(step.finished)
        for req in step.tool_calls:
            heapq.heappush(self._events, (req.tool_returns_at, next(self._event_seq), req))
        replica.busy = True
        heapq.heappush(self._ready, (sim.now, replica.index))

    def _absorb(self, replica: _Replica) -> None:
        sched = replica.sim.scheduler
        for req in replica.arrivals:
            sched.add_request(req)
        for req, outcome in replica.returns:
            sched.tool_returned(req, outcome)
        replica.arrivals.clear()
        replica.returns.clear()

    # -- routing -------------------------------------------------------------------------
    def _arrive(self, index: int, arrival: Arrival) -> None:
        req = Request(request_id=index, program=arrival.program, arrival_time=arrival.time)
        if not self.replicas[0].sim.scheduler.fits(req):  # one preset: fits one, fits all
            self._rejected += 1
            log.warning(
                "program %s can never fit in KV memory; rejected", arrival.program.program_id
            )
            return
        turn = Turn(session=index, prompt_tokens=req.segment.prompt_tokens)
        target = self._place(turn)
        self.replicas[target].arrivals.append(req)
        self._deliver(req, target, req.segment.prompt_tokens, arrival.time)

    def _tool_returned(self, req: Request, at: float) -> None:
        seg = req.segment
        outcome = Outcome(
            output_tokens=seg.output_tokens,
            tool=seg.tool,
            tool_duration=seg.tool_duration,
            returned_tokens=seg.returned_tokens,
        )
        home = self._placed[req.request_id][-1]
        prompt = req.program.segments[req.seg_index + 1].prompt_tokens
        turn = Turn(
            session=req.request_id, prompt_tokens=prompt, home=home, held=self._held(req, home)
        )
        target = self._place(turn)
        if target != home:
            self._move(req, self.replicas[home], self.replicas[target])
        self.replicas[target].returns.append((req, outcome))
        self._deliver(req, target, prompt, at)

    def _held(self, req: Request, home: int) -> dict[int, int] | None:
        """The session's KV tokens on each replica that holds some: pinned or swapped on its
        home, and its prefix still cached (not yet evicted) wherever a turn of it ran."""
        held: dict[int, int] = {}
        if req.state in (S.PAUSED_PRESERVED, S.PAUSED_SWAPPED):
            held[home] = req.kv_tokens
        for replica in self.replicas:
            memory = replica.sim.scheduler.memory
            cached = memory.cached_blocks(req.request_id) * memory.block_size
            if cached > held.get(replica.index, 0):
                held[replica.index] = cached
        return held or None

    def _place(self, turn: Turn) -> int:
        target = self.router.route(turn, self._loads)
        if not 0 <= target < len(self.replicas):
            raise SimulationError(
                f"router {self.router.name} chose replica {target} of {len(self.replicas)}"
            )
        return target

    def _move(self, req: Request, old: _Replica, new: _Replica) -> None:
        """The session leaves ``old``: the KV it holds there is released now.  (``old`` needs
        no wake-up: if its work was stalled, this event has woken it already.)"""
        dropped = old.sim.scheduler.release_paused(req)
        old.moved_out += 1
        old.dropped_tokens += dropped
        new.moved_in += 1

    def _deliver(self, req: Request, target: int, prompt: int, at: float) -> None:
        replica = self.replicas[target]
        self._placed.setdefault(req.request_id, []).append(target)
        replica.turns += 1
        replica.load.requests += 1
        replica.load.tokens += prompt
        self._make_ready(replica, at)

    # -- results -------------------------------------------------------------------------
    def _stuck_message(self) -> str:
        parts = []
        for r in self.replicas:
            sched = r.sim.scheduler
            parts.append(
                f"replica {r.index}: {len(sched.waiting)} waiting, {len(sched.running)} running, "
                f"{len(sched.paused)} pinned"
            )
        return "fleet stuck, nothing can be scheduled: " + "; ".join(parts)

    def _result(self, labels: RunLabels) -> FleetResult:
        per_replica = [r.sim.result(labels) for r in self.replicas]
        requests = tuple(
            sorted((m for res in per_replica for m in res.requests), key=lambda m: m.request_id)
        )
        counters = _merge_counters([res.summary for res in per_replica], self._rejected)
        summary = summarize(requests, labels=labels, preset=self.preset.name, counters=counters)
        replicas = tuple(
            ReplicaCounters(
                index=r.index,
                turns=r.turns,
                moved_in=r.moved_in,
                moved_out=r.moved_out,
                dropped_tokens=r.dropped_tokens,
                recomputed_tokens=r.sim.scheduler.counters.recomputed_tokens,
                finished=r.finished,
                iterations=r.sim.scheduler.iteration,
                busy_s=r.busy_s,
                peak_kv_fraction=res.summary.peak_kv_fraction,
            )
            for r, res in zip(self.replicas, per_replica, strict=True)
        )
        run = RunResult(summary=summary, requests=requests, timeline=None)
        placements = {rid: tuple(turns) for rid, turns in sorted(self._placed.items())}
        return FleetResult(
            run=run, routing=self.router.name, replicas=replicas, placements=placements
        )


def _merge_counters(summaries: Sequence[RunSummary], rejected: int) -> EngineCounters:
    """The fleet's counters: sums over replicas, peaks the highest replica's; every counter the
    engine reports is merged by name, so one added to :class:`EngineCounters` is carried."""
    values: dict[str, int | float] = {}
    for f in fields(EngineCounters):
        if f.name == "rejected":
            values[f.name] = rejected
            continue
        per = [getattr(s, f.name) for s in summaries]
        values[f.name] = max(per) if f.name.startswith("peak_") else sum(per)
    return EngineCounters(**values)  # type: ignore[arg-type]
