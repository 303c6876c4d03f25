"""The iteration builder: continuous batching under a token budget, exact to the block.

Each iteration, in order: apply the policy's decisions about paused requests; advance resident
requests (decodes first, then prefill continuations), freeing memory when a block is missing by
releasing preserved pins (worst first) and then preempting (largest policy key first, recompute);
swap in resumed requests; admit from the waiting queue in policy order, through the policy's gate,
until the budget, the sequence limit or the memory (keeping a 1 % watermark) runs out.  The policy
decides; this module only enforces budgets and accounts blocks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lamps_agent.request import KVStrategy, Request, RequestState

if TYPE_CHECKING:
    from lamps_agent.sim.engine import Simulator

S = RequestState


@dataclass(slots=True)
class SchedulerOutput:
    """What one iteration computes and moves."""

    prefills: list[tuple[Request, int]] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)
    swap_in_tokens: int = 0
    swap_out_tokens: int = 0

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefills)

    @property
    def query_tokens(self) -> int:
        return self.prefill_tokens + len(self.decodes)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes and not self.swap_in_tokens


class BatchScheduler:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        preset = sim.preset
        self.watermark_blocks = max(1, preset.num_gpu_blocks // 100)
        self.resuming: deque[Request] = deque()

    def schedule(self) -> SchedulerOutput:
        sim = self.sim
        out = SchedulerOutput(swap_out_tokens=sim.take_pending_swap_out())
        policy = sim.policy
        if policy.adjusts_paused and sim.preserved:
            for req, strategy in policy.adjust_paused(list(sim.preserved.values())):
                if req.state is S.PAUSED_PRESERVED and strategy is not KVStrategy.PRESERVE:
                    out.swap_out_tokens += sim.unpin(req, strategy)
        if policy.uses_holds:
            policy.begin_iteration(sim.running)
        budget = sim.preset.token_budget
        iteration = sim.iteration
        budget = self._advance_decodes(out, budget, iteration)
        budget = self._advance_prefills(out, budget, iteration)
        self._swap_in(out)
        if budget > 0:
            self._admit(out, budget, iteration)
        return out

    # -- resident requests ---------------------------------------------------------------
    def _advance_decodes(self, out: SchedulerOutput, budget: int, iteration: int) -> int:
        sim = self.sim
        memory = sim.memory
        holds = sim.policy.uses_holds
        for req in list(sim.running):
            if budget <= 0:
                break
            if req.state is not S.DECODING or (holds and sim.policy.hold(req)):
                continue
            need = memory.blocks_for(req.kv_tokens + 1) - req.gpu_blocks
            if need > 0 and not self._reserve(req, need, iteration):
                continue
            req.scheduled_iteration = iteration
            out.decodes.append(req)
            budget -= 1
        return budget

    def _advance_prefills(self, out: SchedulerOutput, budget: int, iteration: int) -> int:
        memory = self.sim.memory
        for req in list(self.sim.running):
            if budget <= 0:
                break
            if req.state is not S.PREFILLING or req.scheduled_iteration == iteration:
                continue
            chunk = min(req.remaining_prefill, budget)
            finishing = 1 if chunk == req.remaining_prefill else 0
            need = memory.blocks_for(req.kv_tokens + chunk + finishing) - req.gpu_blocks
            if need > 0 and not self._reserve(req, need, iteration):
                continue
            req.scheduled_iteration = iteration
            out.prefills.append((req, chunk))
            budget -= chunk
        return budget

    def _reserve(self, req: Request, need: int, iteration: int) -> bool:
        """Allocate ``need`` blocks to ``req``, releasing pins and preempting as needed.
        False if ``req`` itself had to be preempted."""
        sim = self.sim
        memory = sim.memory
        while not memory.can_allocate(need):
            if sim.preserved:
                pinned = max(sim.preserved.values(), key=sim.policy.pin_release_key)
                sim.unpin(pinned, KVStrategy.DISCARD)
                sim.counters.pins_released += 1
                continue
            candidates = [r for r in sim.running if r.scheduled_iteration != iteration]
            victim = max(candidates, key=sim.policy.preemption_key)
            sim.preempt(victim)
            if victim is req:
                return False
        memory.allocate(need)
        req.gpu_blocks += need
        return True

    # -- entering the GPU ----------------------------------------------------------------
    def _swap_in(self, out: SchedulerOutput) -> None:
        sim = self.sim
        memory = sim.memory
        while self.resuming and len(sim.running) < sim.preset.max_num_seqs:
            req = self.resuming[0]
            blocks = memory.blocks_for(req.kv_tokens)
            if not memory.can_allocate(blocks + self.watermark_blocks):
                break
            self.resuming.popleft()
            memory.swap_in(req.host_blocks, blocks)
            req.host_blocks = 0
            req.gpu_blocks = blocks
            out.swap_in_tokens += req.kv_tokens
            sim.note_dequeued(req)
            req.move_to(S.PREFILLING)
            sim.running.append(req)

    def _admit(self, out: SchedulerOutput, budget: int, iteration: int) -> None:
        sim = self.sim
        memory = sim.memory
        if not sim.waiting or memory.free_gpu_blocks <= self.watermark_blocks:
            return
        policy = sim.policy
        gate = policy.admission_gate()
        admitted: list[Request] = []
        for req in sim.waiting.ordered(iteration):
            if budget <= 0 or len(sim.running) + len(admitted) >= sim.preset.max_num_seqs:
                break
            chunk = min(req.remaining_prefill, budget)
            finishing = 1 if chunk == req.remaining_prefill else 0
            need = memory.blocks_for(req.kv_tokens + chunk + finishing) - req.gpu_blocks
            if not memory.can_allocate(need + self.watermark_blocks):
                break  # head-of-line: the next in order waits for memory too
            if gate is not None and not gate.allow(req):
                if gate.exhausted:
                    break
                continue
            if sim.waiting.is_starved(req, iteration):
                # The promotion sticks: last to be preempted, and back at the head if it is.
                req.queue_key = (-math.inf, float(req.enqueued_iteration), float(req.request_id))
            sim.waiting.remove(req)
            memory.allocate(need)
            req.gpu_blocks += need
            req.scheduled_iteration = iteration
            admitted.append(req)
            out.prefills.append((req, chunk))
            budget -= chunk
        for req in admitted:
            sim.note_dequeued(req)
            req.move_to(S.PREFILLING)
            sim.running.append(req)
            policy.on_admit(req)
