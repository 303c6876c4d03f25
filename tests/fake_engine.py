"""A fake vLLM: vLLM V1's scheduling pass in miniature, driving the core as the plug-in does.

vLLM's contract, as ``vllm/v1/core/sched/scheduler.py`` (0.32) runs it and the plug-in
(:mod:`adapters.vllm.scheduler`) hooks it:

* before the pass, the plug-in expires and revisits pins, sets aside the requests the policy
  holds, and sorts ``running`` into the core's order (:func:`adapters.vllm.execute.order_running`);
* vLLM walks ``running`` from the front within a token budget; a request whose blocks cannot be
  allocated first gets the pins the core gives up (the plug-in's allocation hook,
  :func:`adapters.vllm.execute.retry_allocation`), then preempts ``running.pop()`` until it fits
  or is the victim itself (then the walk stops);
* only if nothing was preempted, vLLM takes waiting requests from the plug-in's queue — a lazy
  walk of the core's admissible requests — while it has token budget and seats, and stops at the
  first one it cannot allocate.

Blocks are the core's :class:`~lamps_agent.kv_memory.KVMemory`; the clock, events and cost model
are the simulator's (this engine is a :class:`~lamps_agent.sim.Simulator` whose batch builder is
replaced), so any difference in the decisions it records is a difference between the core's own
batch builder (:meth:`lamps_agent.scheduler.core.Scheduler.schedule`) and vLLM's loop as the
plug-in drives it.  Needs no vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.vllm.execute import order_running, retry_allocation
from lamps_agent.policies.base import Policy
from lamps_agent.presets import Preset
from lamps_agent.request import Request, RequestState
from lamps_agent.scheduler import Scheduler, SchedulerOutput
from lamps_agent.scheduler.core import CopyBudget
from lamps_agent.sim import Simulator
from lamps_agent.workloads.arrivals import Arrival

S = RequestState


class FakeKVCacheManager:
    """vLLM's ``allocate_slots``: the blocks, or None (and no change) when they are not free."""

    def __init__(self, core: Scheduler) -> None:
        self.core = core

    def allocate_slots(self, request: Request, num_blocks: int) -> int | None:
        memory = self.core.memory
        if not memory.can_allocate(num_blocks):
            return None
        memory.allocate(num_blocks)
        request.gpu_blocks += num_blocks
        return num_blocks


class FakeVllm:
    """The batch builder of a vLLM engine with the plug-in loaded."""

    def __init__(self, core: Scheduler) -> None:
        self.core = core
        self.kv_cache_manager = FakeKVCacheManager(core)
        retry_allocation(self.kv_cache_manager, self._release_for)

    def _release_for(self, request: Request) -> bool:
        """The plug-in's hook: a failed allocation releases the pin the core gives up."""
        paused = self.core.pin_to_release(exclude=request.request_id)
        if paused is None:
            return False
        self.core.drop_preserved(paused)
        return True

    def schedule(self) -> SchedulerOutput:
        core = self.core
        core.sync_view()
        out = SchedulerOutput()
        # The plug-in, before vLLM's pass.
        for paused in core.expire_pins():
            core.drop_preserved(paused)
        for paused, _ in core.revisit_paused():
            core.drop_preserved(paused)
        policy = core.policy
        running = list(core.running)
        order_running(running, core, lambda r: r)
        if policy.uses_holds:  # asked in the running order, as the core asks
            policy.begin_iteration(core.running_order())
            running = [r for r in running if not policy.hold(r)]
        # vLLM: the running requests.
        budget = core.preset.token_budget
        preempted = self._advance(running, out, budget)
        budget -= out.query_tokens
        # vLLM: the waiting requests, only in a step that preempted nothing.
        if not preempted:
            self._admit(out, budget)
        out.swap_out_tokens += core.take_pending_swap_out()
        return out

    def _advance(self, running: list[Request], out: SchedulerOutput, budget: int) -> bool:
        core = self.core
        memory = core.memory
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.state is S.DECODING:
                chunk, tokens = 0, 1
            elif req.state is S.PREFILLING:
                chunk = tokens = min(req.remaining_prefill, budget)
            else:
                i += 1
                continue
            need = memory.blocks_for(req.kv_tokens + tokens) - req.gpu_blocks
            fits = need <= 0 or self.kv_cache_manager.allocate_slots(req, need) is not None
            while not fits:
                victim = running.pop()
                core.preempt(victim)
                preempted = True
                if victim is req:
                    break
                fits = self.kv_cache_manager.allocate_slots(req, need) is not None
            if not fits:
                break
            req.scheduled_iteration = core.iteration
            if req.state is S.DECODING:
                out.add_decode(req)
                budget -= 1
            else:
                out.add_prefill(req, chunk)
                budget -= chunk
            i += 1
        return preempted

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        core = self.core
        walk = core.admissible(len(core.waiting))  # the plug-in's queue: lazy, in core order
        copy = CopyBudget(core.copy_budget_tokens())
        taken: list[Request] = []
        while budget > 0:
            req = next(walk, None)
            if req is None or len(core.running) + len(taken) >= core.preset.max_num_seqs:
                break
            if not copy.allows(req) or not core.make_room(req, budget):
                break  # allocate_slots failed: vLLM stops admitting this step
            core.take(req)
            taken.append(req)
            copy.spend(req)
            budget -= core.load_admitted(req, budget, out)
        for req in taken:  # the queue's end_step: what vLLM kept is admitted
            core.admit_taken(req)


def fake_vllm_engine(
    *, preset: Preset, policy: Policy, arrivals: Sequence[Arrival], record: bool = True
) -> Simulator:
    """A simulator whose batches are built by :class:`FakeVllm` instead of the core."""
    sim = Simulator(preset=preset, policy=policy, arrivals=arrivals)
    if record:
        sim.scheduler.decisions = []
    sim.scheduler.schedule = FakeVllm(sim.scheduler).schedule  # type: ignore[method-assign]
    return sim
