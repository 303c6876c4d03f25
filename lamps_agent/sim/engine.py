"""The discrete-event engine simulator: iteration-level continuous batching on a cost model.

It keeps only the clock, the event heap (arrivals, tool returns) and the cost model; every
scheduling decision belongs to the core :class:`~lamps_agent.scheduler.core.Scheduler`, driven
here through vLLM's contract: ``schedule()`` builds an iteration, the cost model says how long it
takes (compute, including prefill attention over the existing context, and the step's copies:
overlapping compute or serialised with it, as the preset says), ``update_from_output()`` advances every scheduled request and reports the turns
that ended.  When nothing can run the clock jumps to the next event.  Everything is deterministic:
same workload, policy and predictor seed → identical results.

:meth:`Simulator.step` is one iteration without the events; :meth:`Simulator.run` is the loop of
absorbing due events and stepping, and a fleet (:mod:`lamps_agent.sim.fleet`) drives the same
``step()`` of each replica with the events it routes there.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from lamps_agent.errors import SimulationError
from lamps_agent.metrics import (
    EngineCounters,
    KVTimeline,
    RequestMetrics,
    RunLabels,
    RunResult,
    summarize,
)
from lamps_agent.policies.base import Policy
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import Request
from lamps_agent.scheduler import Scheduler, SchedulerOutput
from lamps_agent.steps import StepRecord, StepShape, request_key
from lamps_agent.workloads.arrivals import Arrival

log = logging.getLogger(__name__)


class StepStatus(Enum):
    """How a :meth:`Simulator.step` went."""

    RAN = "ran"  # an iteration ran; the clock is at its end
    IDLE = "idle"  # no work: nothing waiting or running
    BLOCKED = "blocked"  # work, but nothing can be scheduled until an event


@dataclass(frozen=True, slots=True)
class Step:
    """What one :meth:`Simulator.step` did."""

    status: StepStatus
    duration: float = 0.0  # seconds the iteration took on the cost model (0 unless it ran)
    finished: tuple[Request, ...] = ()  # programs whose last turn ended
    tool_calls: tuple[Request, ...] = ()  # turns that paused on a tool; ``tool_returns_at`` set


_IDLE = Step(StepStatus.IDLE)
_BLOCKED = Step(StepStatus.BLOCKED)


class Simulator:
    """One engine on the cost model: :meth:`run` a workload to the end, or :meth:`step` it one
    iteration at a time with the events delivered by the caller."""

    def __init__(
        self,
        *,
        preset: Preset,
        policy: Policy,
        arrivals: Sequence[Arrival],
        record_timeline: bool = False,
        record_steps: bool = False,
        fair_share: bool = True,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        """``fair_share``, ``tenant_weights``: the scheduler's share per tenant
        (:class:`Scheduler`; no change with one tenant)."""
        if any(b.time < a.time for a, b in itertools.pairwise(arrivals)):
            raise ValueError("arrivals must be sorted by time")
        self.preset = preset
        self.policy = policy
        self.arrivals = arrivals
        self.scheduler = Scheduler(
            preset=preset, policy=policy, fair_share=fair_share, tenant_weights=tenant_weights
        )
        self.now = 0.0
        self.memory_waste_token_s = 0.0
        self._events: list[tuple[float, int, Request]] = []  # tool returns
        self._event_seq = itertools.count()
        self._next_arrival = 0
        self._done: list[Request] = []
        self._record = record_timeline
        self._t_times: list[float] = []
        self._t_used: list[int] = []
        self._t_pinned: list[int] = []
        # a served engine's time outside its steps per turn: each turn reaches it this late
        self._frontend = preset.cost.frontend_ms_per_turn / 1000.0
        # one record per iteration, in the served engine's step-log format (lamps_agent.steps)
        self.steps: list[StepRecord] | None = [] if record_steps else None

    # -- the main loop -------------------------------------------------------------------
    def run(self, labels: RunLabels) -> RunResult:
        total = len(self.arrivals)
        while len(self._done) + self.scheduler.counters.rejected < total:
            self._absorb_events()
            step = self.step()
            if step.status is not StepStatus.RAN:
                # Nothing can advance until a tool returns or a request arrives.
                self._jump_to_next_event()
            for req in step.tool_calls:
                heapq.heappush(self._events, (req.tool_returns_at, next(self._event_seq), req))
        return self.result(labels)

    def step(self) -> Step:
        """One iteration at the current clock: the scheduler's batch, its time on the cost
        model, the clock moved to its end, every scheduled request advanced.

        Events are the caller's: :meth:`run` absorbs the arrivals and tool returns due before
        each step, a fleet hands a replica's to its :attr:`scheduler`.  When the step cannot run
        (:attr:`StepStatus.IDLE` or :attr:`StepStatus.BLOCKED`) the clock stays where it is and
        the caller moves it to its next event (:meth:`advance_to`).  Finished programs are kept for
        :meth:`result`; a turn that ended in a tool call comes back with its return time set,
        for the caller to deliver when it is due."""
        sched = self.scheduler
        if not sched.has_work:
            return _IDLE
        resident = {req: req.preemptions for req in sched.running} if self.steps is not None else {}
        out = sched.schedule()
        if out.is_empty:
            return _BLOCKED
        dt, compute = self._execute(out)
        if self.steps is not None:
            self._record_step(out, dt, [r for r, n in resident.items() if r.preemptions > n])
        self.now += dt
        sched.set_time(self.now)
        finished: list[Request] = []
        tool_calls: list[Request] = []
        for end in sched.update_from_output(out, step_time=dt, compute_time=compute):
            req = end.request
            if end.strategy is None:
                self._done.append(req)
                finished.append(req)
            else:
                req.tool_returns_at = self.now + req.segment.tool_duration + self._frontend
                tool_calls.append(req)
        return Step(StepStatus.RAN, dt, tuple(finished), tuple(tool_calls))

    def advance_to(self, t: float) -> None:
        """Move the clock to ``t`` with nothing running (a jump to the next event); the KV held
        for paused turns accrues its memory waste meanwhile.  A ``t`` not after now does
        nothing."""
        if t > self.now:
            dt = t - self.now
            self.memory_waste_token_s += self.scheduler.paused.preserved_tokens * dt
            self.now += dt
            self.scheduler.set_time(self.now)

    def _next_event_time(self) -> float | None:
        times = []
        if self._next_arrival < len(self.arrivals):
            times.append(self.arrivals[self._next_arrival].time + self._frontend)
        if self._events:
            times.append(self._events[0][0])
        return min(times) if times else None

    def _jump_to_next_event(self) -> None:
        t = self._next_event_time()
        if t is None:
            sched = self.scheduler
            raise SimulationError(
                f"stuck at t={self.now:.3f}s: {len(sched.waiting)} waiting, {len(sched.running)} "
                f"running, {len(sched.paused)} pinned, nothing can be scheduled"
            )
        self.advance_to(t)

    def _execute(self, out: SchedulerOutput) -> tuple[float, float]:
        """Seconds the iteration takes on the cost model, and its compute alone."""
        preset = self.preset
        cost = preset.cost
        shape = step_shape(out)
        compute = cost.iteration_time(
            shape.prefill_tokens,
            shape.decode_seqs,
            shape.resident_kv_tokens,
            shape.attn_products,
            shape.prefill_seqs,
        )
        moved = out.swap_in_tokens + out.swap_out_tokens
        transfer = cost.swap_time(moved * preset.kv_bytes_per_token) if moved else 0.0
        dt = cost.step_time(compute, transfer)
        preserved = self.scheduler.paused.preserved_tokens
        self.memory_waste_token_s += preserved * dt
        if self._record:
            memory = self.scheduler.memory
            self._t_times.append(self.now + dt)
            self._t_used.append(memory.used_gpu_blocks)
            self._t_pinned.append(memory.blocks_for(preserved))
        return dt, compute

    def _record_step(self, out: SchedulerOutput, dt: float, preempted: list[Request]) -> None:
        assert self.steps is not None
        scheduled = {request_key(r.request_id, r.seg_index): 1 for r in out.decodes}
        for r, chunk in out.prefills:
            scheduled[request_key(r.request_id, r.seg_index)] = chunk
        self.steps.append(
            StepRecord(
                step=len(self.steps) + 1,
                t=self.now,
                ms=dt * 1000.0,
                shape=step_shape(out),
                scheduled=scheduled,
                preempted=sorted(request_key(r.request_id, r.seg_index) for r in preempted),
                used_blocks=self.scheduler.memory.used_gpu_blocks,
            )
        )

    # -- events --------------------------------------------------------------------------
    def _absorb_events(self) -> None:
        arrivals = self.arrivals
        late = self._frontend  # the same sum as _next_event_time's, so a jump to it absorbs it
        while (
            self._next_arrival < len(arrivals)
            and arrivals[self._next_arrival].time + late <= self.now
        ):
            arrival = arrivals[self._next_arrival]
            self._arrive(self._next_arrival, arrival)
            self._next_arrival += 1
        while self._events and self._events[0][0] <= self.now:
            _, _, req = heapq.heappop(self._events)
            self._tool_returned(req)

    def _arrive(self, index: int, arrival: Arrival) -> None:
        req = Request(request_id=index, program=arrival.program, arrival_time=arrival.time)
        if not self.scheduler.fits(req):
            self.scheduler.counters.rejected += 1
            log.warning(
                "program %s can never fit in KV memory; rejected", arrival.program.program_id
            )
            return
        self.scheduler.add_request(req)

    def _tool_returned(self, req: Request) -> None:
        seg = req.segment
        outcome = Outcome(
            output_tokens=seg.output_tokens,
            tool=seg.tool,
            # the gap as a served engine observes it: the tool, then the front end's time before
            # the next turn reaches the scheduler (0 on a preset without a measured front end)
            tool_duration=seg.tool_duration + self._frontend,
            returned_tokens=seg.returned_tokens,
        )
        self.scheduler.tool_returned(req, outcome)

    # -- results -------------------------------------------------------------------------
    def result(self, labels: RunLabels) -> RunResult:
        """The run so far: the finished programs' metrics, the engine's counters and, when
        recorded, the KV timeline."""
        done = sorted(self._done, key=lambda r: r.request_id)
        metrics = tuple(_request_metrics(r) for r in done)
        sched = self.scheduler
        memory = sched.memory
        c = sched.counters
        counters = EngineCounters(
            recomputed_tokens=c.recomputed_tokens,
            swapped_bytes=c.swapped_tokens * self.preset.kv_bytes_per_token,
            memory_waste_token_s=self.memory_waste_token_s,
            peak_kv_blocks=memory.peak_gpu_blocks,
            peak_kv_fraction=memory.peak_gpu_blocks / memory.num_gpu_blocks,
            iterations=sched.iteration,
            preemptions=c.preemptions,
            pins_released=c.pins_released,
            swap_fallbacks=c.swap_fallbacks,
            rejected=c.rejected,
            prefix_hit_tokens=c.prefix_hit_tokens,
            admissions=c.admissions,
            starved_admissions=c.starved_admissions,
        )
        summary = summarize(metrics, labels=labels, preset=self.preset.name, counters=counters)
        timeline = None
        if self._record:
            timeline = KVTimeline(
                times=tuple(self._t_times),
                used_blocks=tuple(self._t_used),
                preserved_blocks=tuple(self._t_pinned),
                capacity_blocks=memory.num_gpu_blocks,
            )
        return RunResult(
            summary=summary,
            requests=metrics,
            timeline=timeline,
            first_turn_waits=sched.first_turn_waits.summary(),
        )


def step_shape(out: SchedulerOutput) -> StepShape:
    """The cost model's inputs for an iteration (each request's ``kv_tokens``: its context before
    this step's chunk)."""
    resident = sum(r.kv_tokens for r in out.decodes)
    products = 0.0
    for r, chunk in out.prefills:
        resident += r.kv_tokens
        products += chunk * (r.kv_tokens + chunk / 2.0)
    return StepShape(
        prefill_tokens=out.prefill_tokens,
        decode_seqs=len(out.decodes),
        resident_kv_tokens=resident,
        attn_products=products,
        prefill_seqs=len(out.prefills),
    )


def _request_metrics(req: Request) -> RequestMetrics:
    assert req.finish_time is not None and req.first_token_time is not None
    e2e = req.finish_time - req.arrival_time
    out = req.program.total_output_tokens
    return RequestMetrics(
        request_id=req.request_id,
        program_id=req.program.program_id,
        agent=req.program.agent,
        arrival=req.arrival_time,
        finish=req.finish_time,
        e2e=e2e,
        tool_time=req.program.total_tool_time,
        ttft=req.first_token_time - req.arrival_time,
        normalized_latency=e2e / out,
        max_queue_wait=req.max_queue_wait,
        output_tokens=out,
        tool_calls=req.program.num_tool_calls,
        recomputed_tokens=req.recomputed_tokens,
        preemptions=req.preemptions,
    )
