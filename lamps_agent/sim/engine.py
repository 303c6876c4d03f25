"""The discrete-event engine simulator: iteration-level continuous batching on a cost model.

The loop is the schedule / execute / update contract of a real engine: the
:class:`~lamps_agent.sim.scheduler.BatchScheduler` builds an iteration from the policy's decisions,
the cost model says how long it takes (compute, or the swap traffic if that is longer — copies
overlap compute, as INFERCEPT pipelines them), and the update advances every scheduled request.
Between iterations, arrivals and tool returns are timed events; when nothing can run the clock
jumps to the next event.  Everything is deterministic: same workload, policy and predictor seed →
identical results.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.errors import SimulationError
from lamps_agent.kv_memory import KVMemory
from lamps_agent.metrics import Distribution, KVTimeline, RequestMetrics, RunResult, RunSummary
from lamps_agent.policies.base import EngineView, Policy
from lamps_agent.policies.queue import WaitingQueue
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.sim.scheduler import BatchScheduler, SchedulerOutput
from lamps_agent.workloads.arrivals import Arrival

log = logging.getLogger(__name__)
S = RequestState


@dataclass(slots=True)
class Counters:
    recomputed_tokens: int = 0
    swapped_tokens: int = 0
    preemptions: int = 0
    pins_released: int = 0
    swap_fallbacks: int = 0
    rejected: int = 0
    memory_waste_token_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLabels:
    """Names that go into the summary, not into the simulation."""

    policy: str
    predictor: str
    trace: str = "workload"
    qps: float = 0.0
    seed: int = 0


class Simulator:
    def __init__(
        self,
        *,
        preset: Preset,
        policy: Policy,
        arrivals: Sequence[Arrival],
        record_timeline: bool = False,
    ) -> None:
        if any(b.time < a.time for a, b in itertools.pairwise(arrivals)):
            raise ValueError("arrivals must be sorted by time")
        self.preset = preset
        self.policy = policy
        self.arrivals = arrivals
        self.memory = KVMemory(
            num_gpu_blocks=preset.num_gpu_blocks,
            num_host_blocks=preset.num_host_blocks,
            block_size=preset.block_size,
        )
        self.view = EngineView(preset=preset, memory=self.memory)
        policy.bind(self.view)
        self.waiting = WaitingQueue(starvation_threshold=policy.starvation_threshold)
        self.running: list[Request] = []
        self.preserved: dict[int, Request] = {}
        self.scheduler = BatchScheduler(self)
        self.counters = Counters()
        self.now = 0.0
        self.iteration = 0
        self._events: list[tuple[float, int, Request]] = []  # tool returns
        self._event_seq = itertools.count()
        self._next_arrival = 0
        self._pending_swap_out = 0
        self._preserved_tokens = 0
        self._done: list[Request] = []
        self._record = record_timeline
        self._t_times: list[float] = []
        self._t_used: list[int] = []
        self._t_pinned: list[int] = []

    # -- the main loop -------------------------------------------------------------------
    def run(self, labels: RunLabels) -> RunResult:
        total = len(self.arrivals)
        while len(self._done) + self.counters.rejected < total:
            self._absorb_events()
            if not (self.running or self.waiting or self.scheduler.resuming):
                self._jump_to_next_event()
                continue
            self._sync_view()
            out = self.scheduler.schedule()
            if out.is_empty:
                # Nothing can advance until a tool returns or a request arrives.
                self._jump_to_next_event()
                continue
            self.now += self._execute(out)
            self._update(out)
            self.iteration += 1
        return self._result(labels)

    def _sync_view(self) -> None:
        view = self.view
        view.now = self.now
        view.iteration = self.iteration
        view.num_running = len(self.running)
        view.running_tokens = sum(r.kv_tokens for r in self.running)

    def _next_event_time(self) -> float | None:
        times = []
        if self._next_arrival < len(self.arrivals):
            times.append(self.arrivals[self._next_arrival].time)
        if self._events:
            times.append(self._events[0][0])
        return min(times) if times else None

    def _jump_to_next_event(self) -> None:
        t = self._next_event_time()
        if t is None:
            raise SimulationError(
                f"stuck at t={self.now:.3f}s: {len(self.waiting)} waiting, {len(self.running)} "
                f"running, {len(self.scheduler.resuming)} to swap in, nothing can be scheduled"
            )
        if t > self.now:
            self._advance_clock(t - self.now)

    def _advance_clock(self, dt: float) -> None:
        self.counters.memory_waste_token_s += self._preserved_tokens * dt
        self.now += dt
        self.view.now = self.now

    def _execute(self, out: SchedulerOutput) -> float:
        preset = self.preset
        resident = sum(r.kv_tokens for r in out.decodes) + sum(r.kv_tokens for r, _ in out.prefills)
        compute = preset.cost.iteration_time(out.prefill_tokens, len(out.decodes), resident)
        moved = out.swap_in_tokens + out.swap_out_tokens
        self.counters.swapped_tokens += moved
        transfer = preset.cost.swap_time(moved * preset.kv_bytes_per_token)
        dt = max(compute, transfer)
        self.counters.memory_waste_token_s += self._preserved_tokens * dt
        self.view.last_iteration_time = dt
        self.view.batch_query_tokens = out.query_tokens
        if self._record:
            self._t_times.append(self.now + dt)
            self._t_used.append(self.memory.used_gpu_blocks)
            self._t_pinned.append(self.memory.blocks_for(self._preserved_tokens))
        return dt

    # -- events --------------------------------------------------------------------------
    def _absorb_events(self) -> None:
        arrivals = self.arrivals
        while self._next_arrival < len(arrivals) and arrivals[self._next_arrival].time <= self.now:
            arrival = arrivals[self._next_arrival]
            self._arrive(self._next_arrival, arrival)
            self._next_arrival += 1
        while self._events and self._events[0][0] <= self.now:
            _, _, req = heapq.heappop(self._events)
            self._tool_returned(req)

    def _arrive(self, index: int, arrival: Arrival) -> None:
        req = Request(request_id=index, program=arrival.program, arrival_time=arrival.time)
        last = arrival.program.segments[-1]
        peak = self.memory.blocks_for(last.prompt_tokens + last.output_tokens)
        if peak + self.scheduler.watermark_blocks > self.memory.num_gpu_blocks:
            self.counters.rejected += 1
            log.warning("program %s needs %d KV blocks; rejected", arrival.program.program_id, peak)
            return
        self.policy.on_turn_start(req)
        self._enqueue(req, resumed=False)

    def _enqueue(self, req: Request, *, resumed: bool) -> None:
        req.enqueued_at = self.now
        self.waiting.push(req, self.policy.queue_key(req, resumed=resumed), self.iteration)
        self.policy.on_enqueue(req)

    def note_dequeued(self, req: Request) -> None:
        """A request left a queue for the GPU: record how long it waited."""
        wait = self.now - req.enqueued_at
        if wait > req.max_queue_wait:
            req.max_queue_wait = wait

    def _tool_returned(self, req: Request) -> None:
        seg = req.segment
        self.policy.on_turn_end(
            req,
            Outcome(
                output_tokens=seg.output_tokens,
                tool=seg.tool,
                tool_duration=seg.tool_duration,
                returned_tokens=seg.returned_tokens,
            ),
        )
        state = req.state
        req.start_next_segment()
        self._sync_view()
        self.policy.on_turn_start(req)
        if state is S.PAUSED_PRESERVED:
            del self.preserved[req.request_id]
            self._preserved_tokens -= req.kv_tokens
            req.move_to(S.PREFILLING)
            self.running.append(req)
        elif state is S.PAUSED_SWAPPED:
            req.move_to(S.RESUMING_SWAPPED)
            req.enqueued_at = self.now
            self.scheduler.resuming.append(req)
        else:
            req.move_to(S.WAITING)
            self._enqueue(req, resumed=True)

    # -- state changes the scheduler asks for --------------------------------------------
    def take_pending_swap_out(self) -> int:
        tokens, self._pending_swap_out = self._pending_swap_out, 0
        return tokens

    def preempt(self, req: Request) -> None:
        """Free a running request's KV and send it back to wait; it will recompute."""
        self.running.remove(req)
        self.policy.on_leave(req)
        self.memory.free(req.gpu_blocks)
        self.counters.recomputed_tokens += req.kv_tokens
        req.recomputed_tokens += req.kv_tokens
        req.gpu_blocks = 0
        req.kv_tokens = 0
        req.preemptions += 1
        self.counters.preemptions += 1
        req.move_to(S.WAITING)
        req.enqueued_at = self.now
        self.waiting.push(req, req.queue_key, self.iteration)  # keeps its place, as in vLLM
        self.policy.on_enqueue(req)

    def unpin(self, req: Request, strategy: KVStrategy) -> int:
        """Stop preserving a paused request: swap it out or discard it.  Returns tokens to copy."""
        del self.preserved[req.request_id]
        self._preserved_tokens -= req.kv_tokens
        return self._apply_pause(req, strategy)

    def _apply_pause(self, req: Request, strategy: KVStrategy) -> int:
        memory = self.memory
        if strategy is KVStrategy.SWAP and not memory.can_swap_out(req.gpu_blocks):
            self.counters.swap_fallbacks += 1
            strategy = KVStrategy.DISCARD
        if strategy is KVStrategy.PRESERVE:
            req.move_to(S.PAUSED_PRESERVED)
            self.preserved[req.request_id] = req
            self._preserved_tokens += req.kv_tokens
            return 0
        if strategy is KVStrategy.SWAP:
            memory.swap_out(req.gpu_blocks)
            req.host_blocks = req.gpu_blocks
            req.gpu_blocks = 0
            req.swapped_out_tokens += req.kv_tokens
            req.move_to(S.PAUSED_SWAPPED)
            return req.kv_tokens
        memory.free(req.gpu_blocks)
        self.counters.recomputed_tokens += req.kv_tokens
        req.recomputed_tokens += req.kv_tokens
        req.gpu_blocks = 0
        req.kv_tokens = 0
        req.move_to(S.PAUSED_DISCARDED)
        return 0

    # -- update after an iteration -------------------------------------------------------
    def _update(self, out: SchedulerOutput) -> None:
        ended = False
        for req, chunk in out.prefills:
            req.kv_tokens += chunk
            if req.kv_tokens >= req.context_target:
                ended |= self._emit_token(req, from_prefill=True)
        for req in out.decodes:
            ended |= self._emit_token(req, from_prefill=False)
        if ended:
            self.running = [r for r in self.running if r.state in (S.PREFILLING, S.DECODING)]

    def _emit_token(self, req: Request, *, from_prefill: bool) -> bool:
        """One new token for ``req``; True if its turn ended."""
        req.kv_tokens += 1
        req.generated += 1
        if from_prefill:
            if req.first_token_time is None:
                req.first_token_time = self.now
            if req.state is S.PREFILLING:
                req.move_to(S.DECODING)
        if req.generated < req.segment.output_tokens:
            return False
        self.policy.on_leave(req)
        if req.is_last_segment:
            self._finish(req)
        else:
            self._pause(req)
        return True

    def _finish(self, req: Request) -> None:
        seg = req.segment
        self.policy.on_turn_end(
            req,
            Outcome(
                output_tokens=seg.output_tokens, tool=None, tool_duration=0.0, returned_tokens=0
            ),
        )
        self.memory.free(req.gpu_blocks)
        req.gpu_blocks = 0
        req.move_to(S.FINISHED)
        req.finish_time = self.now
        self._done.append(req)

    def _pause(self, req: Request) -> None:
        seg = req.segment
        req.tool_started_at = self.now
        req.tool_returns_at = self.now + seg.tool_duration
        strategy = self.policy.on_pause(req)
        self._pending_swap_out += self._apply_pause(req, strategy)
        heapq.heappush(self._events, (req.tool_returns_at, next(self._event_seq), req))

    # -- results -------------------------------------------------------------------------
    def _result(self, labels: RunLabels) -> RunResult:
        done = sorted(self._done, key=lambda r: r.request_id)
        metrics = tuple(_request_metrics(r) for r in done)
        makespan = max((m.finish for m in metrics), default=0.0)
        first = self.arrivals[0].time if self.arrivals else 0.0
        span = max(makespan - first, 1e-9)
        preset = self.preset
        summary = RunSummary(
            policy=labels.policy,
            predictor=labels.predictor,
            preset=preset.name,
            trace=labels.trace,
            qps=labels.qps,
            seed=labels.seed,
            num_requests=len(metrics),
            rejected=self.counters.rejected,
            e2e=Distribution.of([m.e2e for m in metrics]),
            ttft=Distribution.of([m.ttft for m in metrics]),
            normalized_latency=Distribution.of([m.normalized_latency for m in metrics]),
            engine_time=Distribution.of([m.e2e - m.tool_time for m in metrics]),
            max_queue_wait=Distribution.of([m.max_queue_wait for m in metrics]),
            makespan=makespan,
            throughput_rps=len(metrics) / span,
            throughput_tokens_per_s=sum(m.output_tokens for m in metrics) / span,
            recomputed_tokens=self.counters.recomputed_tokens,
            swapped_bytes=self.counters.swapped_tokens * preset.kv_bytes_per_token,
            memory_waste_token_s=self.counters.memory_waste_token_s,
            peak_kv_blocks=self.memory.peak_gpu_blocks,
            peak_kv_fraction=self.memory.peak_gpu_blocks / self.memory.num_gpu_blocks,
            iterations=self.iteration,
            preemptions=self.counters.preemptions,
            pins_released=self.counters.pins_released,
            swap_fallbacks=self.counters.swap_fallbacks,
        )
        timeline = None
        if self._record:
            timeline = KVTimeline(
                times=tuple(self._t_times),
                used_blocks=tuple(self._t_used),
                preserved_blocks=tuple(self._t_pinned),
                capacity_blocks=self.memory.num_gpu_blocks,
            )
        return RunResult(summary=summary, requests=metrics, timeline=timeline)


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
