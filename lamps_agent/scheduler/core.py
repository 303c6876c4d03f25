"""The scheduler: one owner of every scheduling decision, driven by either engine.

Its contract is vLLM's: :meth:`Scheduler.add_request`, :meth:`Scheduler.schedule` →
:class:`SchedulerOutput`, :meth:`Scheduler.update_from_output`, plus the agent events a serving
engine does not know — a turn ended in a tool call (:meth:`Scheduler.pause`), the tool returned
(:meth:`Scheduler.tool_returned`), the session was aborted (:meth:`Scheduler.abort`).

It owns the waiting queue (in the policy's order, with its starvation bound), the running set,
the paused turns (preserved / swapped / discarded, :mod:`~lamps_agent.scheduler.paused`), the KV
accounting (with vLLM's automatic prefix caching unless the policy turns it off) and preemption.
A turn whose tool returned goes through the waiting queue and admission like any other, whatever
happened to its KV: preserved KV stays pinned (releasable under pressure) until it is admitted,
swapped KV is copied back in when it is admitted, within the step's copy budget.  The policy
plugs in through hooks on engine-neutral objects and declares what it needs by capability flags
(``adjusts_paused``, ``uses_holds``, ``gates_admission``), never by name.

Two drivers:

* the simulator (:mod:`lamps_agent.sim`) keeps only the clock, the event heap and the cost model;
  it calls ``schedule`` / ``update_from_output`` and executes the output;
* the vLLM plug-in (:mod:`adapters.vllm`) lets vLLM build the batch and allocate blocks, and asks
  this class for every decision: the waiting order and which requests the admission gate lets
  through (:meth:`admissible`), what to do with a paused turn (:meth:`pause`), the per-step revisit
  (:meth:`revisit_paused`), expired pins (:meth:`expire_pins`) and which pin to release under
  pressure (:meth:`pin_to_release`).  There, :attr:`memory` mirrors vLLM's block pool.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies.base import AdmissionGate, EngineView, Policy
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler.fair_share import FairShare, Standing, Tenant, tenant_of
from lamps_agent.scheduler.paused import UNKNOWN_GAP_S, PausedKV, PausedTable
from lamps_agent.scheduler.queue import WaitingQueue
from lamps_agent.scheduler.waits import FirstTurnWaits

S = RequestState


@dataclass(slots=True)
class SchedulerOutput:
    """What one iteration computes and moves."""

    prefills: list[tuple[Request, int]] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)
    swap_in_tokens: int = 0
    swap_out_tokens: int = 0
    # every scheduled request in the order it was scheduled (the running walk, then admissions):
    # the order vLLM advances them in, and so frees the KV of the turns that end
    order: list[Request] = field(default_factory=list)

    def add_prefill(self, req: Request, chunk: int) -> None:
        self.prefills.append((req, chunk))
        self.order.append(req)

    def add_decode(self, req: Request) -> None:
        self.decodes.append(req)
        self.order.append(req)

    @property
    def prefill_tokens(self) -> int:
        return sum(n for _, n in self.prefills)

    @property
    def query_tokens(self) -> int:
        return self.prefill_tokens + len(self.decodes)

    @property
    def is_empty(self) -> bool:
        return (
            not self.prefills
            and not self.decodes
            and not self.swap_in_tokens
            and not self.swap_out_tokens
        )


class DecisionKind(enum.Enum):
    ADMIT = "admit"  # left the waiting queue for the GPU
    PAUSE = "pause"  # a turn ended in a tool call; the detail is the KV strategy
    PREEMPT = "preempt"  # freed and sent back to wait
    RELEASE = "release"  # a pin given up under memory pressure; the detail is the strategy
    EXPIRE = "expire"  # a pin's time to live ran out
    REVISIT = "revisit"  # the policy moved a pin on its per-iteration revisit


@dataclass(frozen=True, slots=True)
class Decision:
    """One scheduling decision, as both engines' drivers can be compared on.  ``subject`` is the
    program and its turn (``program_id``, turn index) or, for a pin, its key."""

    iteration: int
    kind: DecisionKind
    subject: Hashable
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """A turn that ended in the last iteration: finished, or paused on a tool with a strategy."""

    request: Request
    strategy: KVStrategy | None  # None: the program finished


@dataclass(slots=True)
class SchedulerCounters:
    recomputed_tokens: int = 0
    swapped_tokens: int = 0
    preemptions: int = 0
    pins_released: int = 0  # preserved KV dropped under memory pressure
    pins_expired: int = 0  # preserved KV dropped when its time to live ran out
    swap_fallbacks: int = 0  # swap chosen, no host room: discarded instead
    pin_swaps_discarded: int = 0  # a pin the policy would swap out, on an engine that cannot
    rejected: int = 0
    prefix_hit_tokens: int = 0  # context tokens a turn found in the prefix cache (not recomputed)
    admissions: int = 0  # requests taken from the waiting queue
    starved_admissions: int = 0  # ... of them because the starvation bound promoted them


@dataclass(frozen=True, slots=True, kw_only=True)
class PinLifetime:
    """How long preserved KV may stay pinned: ``factor × predicted tool time + slack``, capped.

    A safety bound on a wrong prediction, the same in both engines: with exact predictions the
    tool returns before the pin expires."""

    factor: float = 1.5
    slack: float = 1.0
    cap: float = 600.0

    def __post_init__(self) -> None:
        for name in ("factor", "slack", "cap"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"pin lifetime {name} must be >= 0")

    def ttl(self, predicted_duration: float) -> float:
        return min(self.factor * predicted_duration + self.slack, self.cap)


class CopyBudget:
    """The host link's share of one step: swapped turns are copied back in while it lasts, and
    the first copy of a step always goes."""

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens
        self.copied = False

    def allows(self, req: Request) -> bool:
        return not (req.host_blocks and self.copied and req.kv_tokens > self.tokens)

    def spend(self, req: Request) -> None:
        if req.host_blocks:
            self.tokens -= req.kv_tokens
            self.copied = True


class Scheduler:
    """Owns the queues, the paused turns, KV accounting and preemption; asks its policy."""

    def __init__(
        self,
        *,
        preset: Preset,
        policy: Policy,
        memory: KVMemory | None = None,
        pin_lifetime: PinLifetime | None = None,
        priority_scheduling: bool = False,
        record_decisions: bool = False,
        fair_share: bool = True,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        """``priority_scheduling``: a request's ``priority`` (lower first, as vLLM's
        ``--scheduling-policy priority``) comes before the policy's keys, in the waiting queue
        and in the running order.  ``record_decisions``: keep every :class:`Decision` in
        :attr:`decisions` (for comparing drivers; off by default, it grows with the run).
        ``fair_share``: no tenant is admitted past its share of KV blocks and seats while another
        tenant waits, and a tenant over its share is preempted first (:mod:`.fair_share`;
        ``tenant_weights`` weigh the shares, 1 for a tenant not named); no change with one
        tenant."""
        self.preset = preset
        self.policy = policy
        self.memory = memory or KVMemory(
            num_gpu_blocks=preset.num_gpu_blocks,
            num_host_blocks=preset.num_host_blocks,
            block_size=preset.block_size,
            prefix_caching=policy.prefix_caching,
        )
        self.paused = PausedTable()
        self.view = EngineView(preset=preset, memory=self.memory, pinned=self.paused)
        policy.bind(self.view)
        if preset.max_model_len is not None:
            policy.limit_context(preset.max_model_len)
        self.pin_lifetime = pin_lifetime or PinLifetime()
        self.waiting = WaitingQueue(starvation_threshold=policy.starvation_threshold)
        self._tenants_seen: set[Tenant] = set()  # up to two: whether tenants share the engine
        self.fair_share = (
            FairShare(
                num_blocks=self.memory.num_gpu_blocks,
                num_seats=preset.max_num_seqs,
                weights=dict(tenant_weights or {}),
            )
            if fair_share
            else None
        )
        self.running: list[Request] = []
        self.counters = SchedulerCounters()
        self.first_turn_waits = FirstTurnWaits()  # where new programs wait (:mod:`.waits`)
        # vLLM's admission headroom (SchedulerConfig.watermark): none by default since V1
        self.watermark_blocks = 0
        self.priority_scheduling = priority_scheduling
        self.now = 0.0
        self.iteration = 0
        self._pending_swap_out = 0
        self._admissions = itertools.count(1)
        self._arrival_seq = itertools.count(1)  # turns in the order they became schedulable
        self.decisions: list[Decision] | None = [] if record_decisions else None

    def _record(self, kind: DecisionKind, subject: Request | Hashable, detail: str = "") -> None:
        if self.decisions is not None:
            if isinstance(subject, Request):
                subject = (subject.program.program_id, subject.seg_index)
            self.decisions.append(Decision(self.iteration, kind, subject, detail))

    # -- clock and view ------------------------------------------------------------------
    def set_time(self, now: float) -> None:
        self.now = now
        self.view.now = now

    def sync_view(self) -> None:
        view = self.view
        view.now = self.now
        view.iteration = self.iteration
        view.num_running = len(self.running)
        view.running_tokens = sum(r.kv_tokens for r in self.running)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # -- requests in ---------------------------------------------------------------------
    def fits(self, req: Request) -> bool:
        """Whether the program's largest context can ever fit in GPU memory."""
        last = req.program.segments[-1]
        peak = self.memory.blocks_for(last.prompt_tokens + last.output_tokens)
        return peak + self.watermark_blocks <= self.memory.num_gpu_blocks

    def add_request(self, req: Request, *, resumed: bool = False) -> None:
        """A new turn became schedulable: the policy predicts it and it joins the waiting queue.

        ``resumed``: the turn continues a session after a tool (an engine that sees each turn as
        a request of its own says so), queued as :meth:`tool_returned` queues a later turn."""
        self.sync_view()
        req.arrival_seq = next(self._arrival_seq)
        self.policy.on_turn_start(req)
        self._enqueue(req, resumed=resumed)

    def _enqueue(self, req: Request, *, resumed: bool) -> None:
        if len(self._tenants_seen) < 2:  # every request enters here: a deployment's tenants
            self._tenants_seen.add(tenant_of(req))
        req.enqueued_at = self.now
        self.first_turn_waits.enqueued(req)
        key = self._ranked(req, self.policy.queue_key(req, resumed=resumed))
        self.waiting.push(req, key, self.iteration)
        self.policy.on_enqueue(req)

    def _ranked(self, req: Request, key: tuple[float, ...]) -> tuple[float, ...]:
        return (float(req.priority), *key) if self.priority_scheduling else key

    def preemption_rank(self, req: Request) -> tuple[float, ...]:
        """Where a resident request stands in the running order (smaller: advanced first,
        preempted last)."""
        return self._ranked(req, self.policy.preemption_key(req))

    def running_order(self) -> list[Request]:
        """The resident requests in the order an iteration advances them — the policy's
        preemption order, ascending.  Preemption victims are taken from the end (vLLM's
        contract: ``running`` is walked from the front and ``running.pop()`` is the victim), so
        both engines preempt the request with the largest key among those not yet advanced."""
        share = self.fair_share
        over = share.victim_last(self.running, self.waiting.tenants, self.paused) if share else None
        if over is None:
            return sorted(self.running, key=self.preemption_rank)
        return sorted(self.running, key=lambda r: (over(r), *self.preemption_rank(r)))

    def _note_dequeued(self, req: Request) -> None:
        wait = self.now - req.enqueued_at
        if wait > req.max_queue_wait:
            req.max_queue_wait = wait

    def tool_returned(self, req: Request, outcome: Outcome, *, key: Hashable | None = None) -> None:
        """The tool of ``req``'s paused turn returned: its next turn waits for admission in the
        policy's order like any other.  Preserved KV stays pinned meanwhile (no longer subject to
        its time to live; still releasable under pressure); swapped KV is copied back in when
        the request is admitted.  ``key``: the pin's key where the engine keyed the pause by
        one (:meth:`pause`), else the request id."""
        self.policy.on_turn_end(req, outcome)
        state = req.state
        req.start_next_segment()
        req.arrival_seq = next(self._arrival_seq)
        if state is S.PAUSED_PRESERVED:
            # The next turn finds the pinned KV through the prefix cache, whole blocks only: the
            # tokens of the last, partial block are computed again (vLLM hashes full blocks).
            req.kv_tokens -= req.kv_tokens % self.memory.block_size
        self.sync_view()
        self.policy.on_turn_start(req)
        if state is S.PAUSED_PRESERVED:
            paused = self.paused.get(req.request_id if key is None else key)
            if paused is not None:  # it waits in the queue as PAUSED_PRESERVED, KV pinned
                paused.returned = True
                paused.expires_at = math.inf
        elif state is S.PAUSED_SWAPPED:
            req.move_to(S.RESUMING_SWAPPED)
        else:
            req.move_to(S.WAITING)
        self._enqueue(req, resumed=True)

    # -- decisions both engines ask for ----------------------------------------------------
    def admission_gate(self) -> AdmissionGate | None:
        if not self.policy.gates_admission:
            return None
        return self._gate(self._standing())

    def _gate(self, standing: Standing | None) -> AdmissionGate | None:
        if not self.policy.gates_admission:
            return None
        return self.policy.admission_gate(shares=_shares(standing))

    def tenant_shares(self) -> dict[Tenant, float] | None:
        """Each tenant's entitlement among the tenants with work (resident, pinned or waiting),
        when the fair share is on and more than one tenant has work; else None."""
        return _shares(self._standing())

    def _standing(self) -> Standing | None:
        """The fair share's usage and entitlements now, once a second tenant has queued."""
        share = self.fair_share
        if share is None or len(self._tenants_seen) < 2:  # one tenant so far: no look per step
            return None
        return share.over(self.running, self.waiting.tenants, self.paused)

    def admissible(
        self, limit: int, *, blocked: Callable[[Request], bool] | None = None
    ) -> Iterator[Request]:
        """Waiting requests the policy would admit now, in its order, at most ``limit``.
        ``blocked(req)`` (the engine's memory check), asked after the gate let ``req`` through
        (as vLLM allocates only the request its queue gave it), stops the walk at the first
        request that cannot fit: the next in order waits for memory too."""
        # One look at the tenants' usage serves the gate and the walk (the walk needs it only
        # with several tenants waiting).
        gates = self.policy.gates_admission
        standing = self._standing() if gates or len(self.waiting.tenants) > 1 else None
        gate = self._gate(standing)
        given = 0
        closed: set[Tenant] = set()  # tenants the gate holds for the rest of this walk
        for req in self._walk(closed, standing):
            if given >= limit:
                return
            if gate is not None and not gate.allow(req):
                self.first_turn_waits.refused(req, self.iteration)
                if gate.exhausted:
                    self.first_turn_waits.walk_closed(self.iteration)
                    return
                if gate.closes_tenant:
                    closed.add(tenant_of(req))
                continue
            if blocked is not None and blocked(req):
                self.first_turn_waits.not_placed(req, self.iteration)
                return
            given += 1
            yield req

    def _walk(
        self, closed: AbstractSet[Tenant], standing: Standing | None = None
    ) -> Iterator[Request]:
        """The waiting queue in the policy's order; with the fair share, tenants at or above
        their share last, and none of the tenants in ``closed`` once there (:mod:`.fair_share`)."""
        if self.fair_share is None:
            return self.waiting.ordered(self.iteration)
        memory = self.memory
        return self.fair_share.order(
            self.waiting,
            self.iteration,
            running=self.running,
            pinned=self.paused,
            blocks_of=lambda r: max(memory.blocks_for(r.context_target) - r.gpu_blocks, 0),
            closed=closed,
            standing=standing,
        )

    def admit(self, req: Request) -> None:
        """``req`` left the waiting queue for the GPU."""
        self._dequeue(req)
        self._place(req)

    # An engine that builds its own batch (vLLM) takes a request from the queue, then either
    # keeps it (admit_taken) or puts it back where it stood (untake) within the same step.
    def take(self, req: Request) -> None:
        self._dequeue(req)

    def untake(self, req: Request, key: tuple[float, ...], enqueued_iteration: int) -> None:
        self.first_turn_waits.not_placed(req, self.iteration)  # the engine could not place it
        self.waiting.push(req, key, enqueued_iteration)

    def admit_taken(self, req: Request) -> None:
        self._place(req)

    def enqueue(self, req: Request) -> None:
        """Put an already predicted request (back) in the waiting queue by the policy's key."""
        self._enqueue(req, resumed=False)

    def _dequeue(self, req: Request) -> None:
        self.counters.admissions += 1
        if self.waiting.is_starved(req, self.iteration):
            # The promotion sticks: last to be preempted, and back at the head if it is.
            req.queue_key = (-math.inf, float(req.enqueued_iteration), float(req.request_id))
            self.counters.starved_admissions += 1
        self.waiting.remove(req)

    def _place(self, req: Request) -> None:
        self.first_turn_waits.admitted(req, iteration=self.iteration, now=self.now)
        self._note_dequeued(req)
        req.admitted_seq = next(self._admissions)
        self._record(DecisionKind.ADMIT, req)
        req.move_to(S.PREFILLING)
        self.running.append(req)
        self.policy.on_admit(req)

    def pause(
        self,
        req: Request,
        *,
        key: Hashable | None = None,
        blocks: int | None = None,
        gap: float | None = None,
        override: KVStrategy | None = None,
    ) -> KVStrategy:
        """``req``'s turn ended in a tool call (or its session may continue): decide what to do
        with its KV and apply it to the accounting.  ``gap`` is the engine's own prediction of
        the pause (else the turn's prediction); ``override`` forces a strategy (an operator who
        lets clients decide).  Returns the strategy taken."""
        if gap is None:
            gap = self._predicted_gap(req)
        self.policy.on_tool_call(req, gap)
        req.tool_started_at = self.now
        pred = req.prediction
        paused = PausedKV(
            key=req.request_id if key is None else key,
            tokens=req.kv_tokens,
            blocks=req.gpu_blocks if blocks is None else blocks,
            paused_at=self.now,
            predicted_return=self.now + gap,
            planned=req.strategy,
            request=req,
            tool=pred.tool if pred is not None else req.segment.tool,
        )
        strategy = override if override is not None else self.policy.on_pause(paused)
        if strategy is KVStrategy.PRESERVE:
            ttl = self.policy.pin_ttl(paused)  # a policy's own time to live, else the default
            paused.expires_at = self.now + (self.pin_lifetime.ttl(gap) if ttl is None else ttl)
        self._pending_swap_out += self._hold(req, paused, strategy)
        self._record(DecisionKind.PAUSE, req, paused.strategy.value)
        return paused.strategy

    @staticmethod
    def _predicted_gap(req: Request) -> float:
        pred = req.prediction
        if pred is not None and pred.has_tool_call:
            return pred.tool_duration
        if pred is None and req.segment.has_tool_call:
            return req.segment.tool_duration
        return UNKNOWN_GAP_S  # predicted "final answer", yet it paused: what actually happened

    def end_turn(
        self,
        req: Request,
        outcome: Outcome,
        *,
        continues: bool,
        key: Hashable | None = None,
        blocks: int | None = None,
        gap: float | None = None,
        override: KVStrategy | None = None,
    ) -> KVStrategy | None:
        """An engine that runs turns itself (vLLM) reports one ended: the program finished
        (``continues`` False) or its session may continue, and then its KV gets a decision.
        Returns the strategy, None for a finished program."""
        if req in self.running:
            self.running.remove(req)
            self.policy.on_leave(req)
        if req.state is S.PREFILLING:
            req.move_to(S.DECODING)
        if not continues:
            self.finish(req, outcome)
            return None
        # As in the simulator, the policy hears the turn's outcome when its tool returns
        # (:meth:`tool_returned`, with the tool's real duration), not at the pause.
        return self.pause(req, key=key, blocks=blocks, gap=gap, override=override)

    def resume_paused(self, key: Hashable) -> PausedKV | None:
        """The session behind ``key`` came back (its next turn was admitted): its preserved
        entry, if any, leaves the table."""
        return self.paused.pop(key)

    def _hold(self, req: Request, paused: PausedKV, strategy: KVStrategy) -> int:
        """Move ``req`` into the paused state for ``strategy``; returns tokens to copy out.

        Every decision to swap — at the pause, on a revisit, for a pin released under pressure
        or at its expiry — lands here, so here is where a full host tier turns it into a discard
        (counted in ``swap_fallbacks``): a decision never fails on memory the core tracks."""
        memory = self.memory
        if strategy is KVStrategy.SWAP and not memory.can_swap_out(
            max(req.gpu_blocks, paused.blocks)
        ):
            self.counters.swap_fallbacks += 1
            strategy = KVStrategy.DISCARD
        paused.strategy = strategy
        if strategy is KVStrategy.PRESERVE:
            self._pin_full_blocks(req, paused)
            req.move_to(S.PAUSED_PRESERVED)
            self.paused.add(paused)
            return 0
        if strategy is KVStrategy.SWAP:
            self._drop_partial_block(req)
            memory.swap_out(req.gpu_blocks)
            req.host_blocks = req.gpu_blocks
            req.gpu_blocks = 0
            req.swapped_out_tokens += req.kv_tokens
            req.move_to(S.PAUSED_SWAPPED)
            return req.kv_tokens
        self._release_kv(req)
        req.move_to(S.PAUSED_DISCARDED)
        return 0

    def _pin_full_blocks(self, req: Request, paused: PausedKV) -> None:
        """A pin holds the turn's full blocks, which the next turn finds by prefix; the partial
        last block is freed now, to the front of the pool (vLLM's plug-in pins hashed blocks
        only, :mod:`adapters.vllm.pins`)."""
        if not self.memory.prefix_caching:
            return
        paused.blocks = min(paused.blocks, self._drop_partial_block(req))

    def _drop_partial_block(self, req: Request) -> int:
        """Free the partial last block of ``req``'s KV (the next turn computes its tokens again)
        and return its full blocks: KV kept across a pause is kept by whole hashed blocks, a
        pin's and a swap's alike (the swap store copies full blocks only,
        :mod:`adapters.vllm.connector`)."""
        memory = self.memory
        full = req.kv_tokens // memory.block_size
        if req.gpu_blocks > full:
            memory.free(req.gpu_blocks - full)
            req.gpu_blocks = full
        req.kv_tokens = full * memory.block_size
        return full

    def revisit_paused(self) -> list[tuple[PausedKV, KVStrategy]]:
        """Once per iteration, for policies that revisit (INFERCEPT): the preserved entries that
        should now be swapped or discarded.  They leave the table; the engine moves the KV."""
        if not (self.policy.adjusts_paused and self.paused):
            return []
        changes: list[tuple[PausedKV, KVStrategy]] = []
        for paused, strategy in self.policy.adjust_paused(self.paused.values()):
            if strategy is KVStrategy.PRESERVE or paused.key not in self.paused:
                continue
            strategy = self._pin_leaves_by(strategy)
            self.paused.pop(paused.key)
            paused.strategy = strategy
            changes.append((paused, strategy))
            self._record(DecisionKind.REVISIT, paused.key, strategy.value)
        return changes

    def _pin_leaves_by(self, strategy: KVStrategy) -> KVStrategy:
        """KV pinned on the GPU leaves it by a discard unless the engine can copy pinned KV out
        (``preset.pin_swap``): a decision no engine can carry out is made by neither."""
        if strategy is KVStrategy.SWAP and not self.preset.pin_swap:
            self.counters.pin_swaps_discarded += 1
            return KVStrategy.DISCARD
        return strategy

    def expire_pins(self) -> list[PausedKV]:
        """Preserved entries whose time to live ran out, removed (the engine frees the KV)."""
        out = self.paused.expired(self.now)
        for paused in out:
            paused.strategy = KVStrategy.DISCARD
            self._record(DecisionKind.EXPIRE, paused.key)
        self.counters.pins_expired += len(out)
        return out

    def pin_to_release(self, *, exclude: Hashable | None = None) -> PausedKV | None:
        """Under memory pressure: the preserved entry the policy would give up first, removed,
        with the policy's choice of swap or discard in its ``strategy`` (a pin whose tool already
        returned is discarded: it is about to be used, a copy out and back buys nothing)."""
        policy_key = self.policy.pin_release_key
        share = self.fair_share
        over = share.victim_last(self.running, self.waiting.tenants, self.paused) if share else None
        if over is None:
            worst = self.paused.worst(lambda p: (policy_key(p),), exclude=exclude)
        else:  # a tenant over its share gives up its pins first
            worst = self.paused.worst(
                lambda p: (float(p.request is not None and over(p.request)), policy_key(p)),
                exclude=exclude,
            )
        if worst is not None:
            self.paused.pop(worst.key)
            worst.strategy = (
                KVStrategy.DISCARD
                if worst.returned
                else self._pin_leaves_by(self.policy.release_strategy(worst))
            )
            self.counters.pins_released += 1
            self._record(DecisionKind.RELEASE, worst.key, worst.strategy.value)
        return worst

    def _release_kv(self, req: Request) -> None:
        """Free ``req``'s GPU KV for a recompute: its full blocks stay in the prefix cache (if
        any) until evicted; what the next prefill computes again counts as recomputed then."""
        memory = self.memory
        memory.free(req.gpu_blocks, owner=req.request_id, cached=req.kv_tokens // memory.block_size)
        req.gpu_blocks = 0
        req.kv_tokens = 0

    def _prefix_hit_blocks(self, req: Request) -> int:
        """Blocks of ``req``'s cached prefix its next prefill can reuse (vLLM recomputes at
        least the last prompt token)."""
        if req.gpu_blocks or req.host_blocks or not self.memory.prefix_caching:
            return 0
        cached = self.memory.cached_blocks(req.request_id)
        if not cached:
            return 0
        return min(cached, (req.context_target - 1) // self.memory.block_size)

    def _take_prefix(self, req: Request, blocks: int) -> None:
        memory = self.memory
        taken = memory.take_cached(req.request_id, blocks)
        tokens = taken * memory.block_size
        req.gpu_blocks += taken
        req.kv_tokens += tokens
        self.counters.prefix_hit_tokens += tokens

    def preempt(self, req: Request) -> None:
        """Free a running request's KV and send it back to wait, keeping its place (as vLLM)."""
        self.running.remove(req)
        self.policy.on_leave(req)
        self._release_kv(req)
        req.preemptions += 1
        self.counters.preemptions += 1
        self._record(DecisionKind.PREEMPT, req)
        req.move_to(S.WAITING)
        req.enqueued_at = self.now
        self.waiting.push(req, req.queue_key, self.iteration)
        self.policy.on_enqueue(req)

    def finish(self, req: Request, outcome: Outcome | None = None) -> None:
        """``req``'s last turn ended."""
        if outcome is None:
            outcome = Outcome(
                output_tokens=req.segment.output_tokens,
                tool=None,
                tool_duration=0.0,
                returned_tokens=0,
            )
        self.policy.on_turn_end(req, outcome)
        # its full blocks stay hashed in vLLM's pool (at its end), though no later turn hits them
        self.memory.free(req.gpu_blocks, cached=req.kv_tokens // self.memory.block_size)
        req.gpu_blocks = 0
        req.move_to(S.FINISHED)
        req.finish_time = self.now
        self.first_turn_waits.forget(req)

    def abort(self, req: Request) -> None:
        """Forget ``req`` wherever it is, releasing its KV."""
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            self.running.remove(req)
            self.policy.on_leave(req)
        self.paused.pop(req.request_id)
        self.memory.free(req.gpu_blocks)
        req.gpu_blocks = 0
        if req.host_blocks:
            self.memory.free_host_blocks += req.host_blocks
            req.host_blocks = 0
        self.policy.on_abort(req)
        self.first_turn_waits.forget(req)

    def release_host_copy(self, req: Request) -> None:
        """``req``'s host copy is no longer the core's to account for: an engine whose turns are
        requests of their own (vLLM) keeps it in its own host store (an LRU cache that evicts
        rather than fills), or the session moved to another engine (:meth:`release_paused`)."""
        if req.state is not S.PAUSED_SWAPPED:
            raise ValueError(f"request {req.request_id} is {req.state.value}, not swapped")
        self.memory.drop_host(req.host_blocks)
        req.host_blocks = 0
        req.move_to(S.PAUSED_DISCARDED)

    def release_paused(self, req: Request) -> int:
        """``req``'s session continues on another engine (a fleet routed its next turn away
        while its tool ran): the KV it still holds here — a pin, or a copy in host memory — is
        dropped as if discarded.  Returns the tokens dropped, which its next turn recomputes."""
        tokens = req.kv_tokens
        if req.state is S.PAUSED_PRESERVED:
            paused = self.paused.pop(req.request_id)
            if paused is None:
                raise RuntimeError(f"request {req.request_id} is preserved but has no pin")
            self._hold(req, paused, KVStrategy.DISCARD)
        elif req.state is S.PAUSED_SWAPPED:
            self.release_host_copy(req)
            req.kv_tokens = 0
        elif req.state is S.PAUSED_DISCARDED:
            return 0
        else:
            raise ValueError(f"request {req.request_id} is {req.state.value}, not paused")
        return tokens

    # -- the simulator's iteration (vLLM builds its own batch) -----------------------------
    def schedule(self) -> SchedulerOutput:
        """Build one iteration: revisit paused KV, advance resident requests (decodes first,
        then prefill continuations; releasing pins, then preempting, when a block is missing),
        admit from the waiting queue through the policy's gate (releasing pins rather than
        blocking on them; swapped requests are copied back in within the step's copy budget)."""
        self.sync_view()
        out = SchedulerOutput()
        for paused in self.expire_pins():
            self.drop_preserved(paused, KVStrategy.DISCARD)
        for paused, strategy in self.revisit_paused():
            self.drop_preserved(paused, strategy)
        self.running = self.running_order()
        if self.policy.uses_holds:
            self.policy.begin_iteration(self.running)
        preemptions = self.counters.preemptions
        budget = self._advance_running(out, self.preset.token_budget)
        if budget > 0 and self.counters.preemptions == preemptions:  # vLLM: none after a preemption
            self._admit(out, budget)
        out.swap_out_tokens += self.take_pending_swap_out()
        return out

    def take_pending_swap_out(self) -> int:
        """Tokens paused turns are copying out, owed to the coming step's copies."""
        tokens, self._pending_swap_out = self._pending_swap_out, 0
        return tokens

    def drop_preserved(self, paused: PausedKV, strategy: KVStrategy | None = None) -> None:
        """Apply a decision about a preserved entry (released, expired or revisited; by default
        its own ``strategy``) to its request; its copy out (if any) goes into the coming step."""
        if strategy is None:
            strategy = paused.strategy
        req = paused.request
        if req is None:
            raise RuntimeError(f"paused entry {paused.key!r} has no request to apply it to")
        if paused.returned:  # its tool returned; it waits for admission
            paused.strategy = KVStrategy.DISCARD
            self._release_kv(req)
            req.move_to(S.PAUSED_DISCARDED)
            req.move_to(S.WAITING)
            return
        self._pending_swap_out += self._hold(req, paused, strategy)

    def _release_a_pin(self, *, exclude: Hashable | None = None) -> bool:
        pinned = self.pin_to_release(exclude=exclude)
        if pinned is None:
            return False
        self.drop_preserved(pinned, pinned.strategy)
        return True

    def _advance_running(self, out: SchedulerOutput, budget: int) -> int:
        """Advance the resident requests in the running order (decodes and prefill chunks in
        one walk, as vLLM); a request that cannot get its blocks preempts from the back of the
        walk, and a walk whose request preempted itself stops (vLLM's ``break``).  Requests the
        policy holds this iteration are out of the walk and cannot be victims (the vLLM
        plug-in sets them aside before vLLM's pass)."""
        memory = self.memory
        policy = self.policy
        holds = policy.uses_holds
        iteration = self.iteration
        walk = [r for r in self.running if not (holds and policy.hold(r))]
        i = 0
        while i < len(walk) and budget > 0:
            req = walk[i]
            if req.state is S.DECODING:
                chunk, tokens = 0, 1
            elif req.state is S.PREFILLING:
                chunk = tokens = min(req.remaining_prefill, budget)
            else:
                i += 1
                continue
            need = memory.blocks_for(req.kv_tokens + tokens) - req.gpu_blocks
            if need > 0 and not self._reserve(req, need, walk):
                break
            req.scheduled_iteration = iteration
            if req.state is S.DECODING:
                out.add_decode(req)
                budget -= 1
            else:
                out.add_prefill(req, chunk)
                budget -= chunk
            i += 1
        return budget

    def _reserve(self, req: Request, need: int, walk: list[Request]) -> bool:
        """Allocate ``need`` blocks to ``req``: a failed allocation releases pins (the policy's
        order, :meth:`pin_to_release`), then preempts the last request of the walk.  False if
        ``req`` itself was the victim."""
        memory = self.memory
        while not memory.can_allocate(need):
            if self._release_a_pin():
                continue
            victim = walk.pop()
            self.preempt(victim)
            if victim is req:
                return False
        memory.allocate(need)
        req.gpu_blocks += need
        return True

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        """Admit from the waiting queue in the policy's order: new turns (reusing a cached
        prefix), turns back from a tool with pinned KV, and swapped turns (copied in while the
        step's copy budget lasts; the first always goes).  The walk starts (and a stateful gate
        is asked) even with nothing waiting, as vLLM asks the plug-in's queue in every step that
        has budget and preempted nothing."""
        admitted: list[Request] = []
        seats = self.preset.max_num_seqs - len(self.running)
        copy = CopyBudget(self.copy_budget_tokens())

        def blocked(req: Request) -> bool:
            return budget <= 0 or not copy.allows(req) or not self.make_room(req, budget)

        for req in self.admissible(seats, blocked=blocked):
            self._dequeue(req)
            admitted.append(req)
            copy.spend(req)
            budget -= self.load_admitted(req, budget, out)
        for req in admitted:  # everyone leaves the queue before the policy hears of any
            self._place(req)

    def admission_need(self, req: Request, budget: int) -> tuple[int, int, int]:
        """What admitting ``req`` takes now: (prefill chunk, new blocks, cached prefix blocks
        it takes back)."""
        memory = self.memory
        hit = self._prefix_hit_blocks(req)
        have = req.kv_tokens + hit * memory.block_size
        chunk = min(req.context_target - have, budget)
        new = memory.blocks_for(have + chunk) - req.gpu_blocks - hit
        return chunk, new, hit

    def make_room(self, req: Request, budget: int) -> bool:
        """Whether ``req``'s admission fits now, releasing pins in the policy's order (never its
        own) while it does not; False once none is left.  As vLLM (``scheduler_reserve_full_isl``,
        on by default), the whole context must fit, not only the first chunk — the blocks it
        still needs beyond those it holds, its cached prefix included — plus the watermark."""
        memory = self.memory
        while True:
            full = memory.blocks_for(req.context_target) - req.gpu_blocks
            if memory.can_allocate(full + self.watermark_blocks):
                return True
            if not self._release_a_pin(exclude=req.request_id):
                return False

    def load_admitted(self, req: Request, budget: int, out: SchedulerOutput) -> int:
        """Place an admitted request's KV (copy a swapped turn back in, take back its cached
        prefix or its pin, allocate the rest) and schedule its first chunk; returns the chunk."""
        memory = self.memory
        chunk, new, hit = self.admission_need(req, budget)
        if req.host_blocks:
            memory.swap_in(req.host_blocks, new)
            req.host_blocks = 0
            out.swap_in_tokens += req.kv_tokens
        else:
            if hit:
                self._take_prefix(req, hit)
            # its pin, if any, is in use again (one of no full block holds nothing, but goes too)
            self.paused.pop(req.request_id)
            memory.allocate(new)
        req.gpu_blocks += new
        req.scheduled_iteration = self.iteration
        out.add_prefill(req, chunk)
        return chunk

    def copy_budget_tokens(self) -> float:
        """KV tokens the host link moves during one step's compute (the last step's)."""
        preset = self.preset
        nbytes = preset.cost.copy_budget_bytes(self.view.last_compute_time)
        return nbytes / preset.kv_bytes_per_token

    def update_from_output(
        self, out: SchedulerOutput, *, step_time: float, compute_time: float | None = None
    ) -> list[TurnEnd]:
        """Advance every scheduled request by what the iteration computed (``self.now`` is the
        iteration's end); returns the turns that ended.  ``compute_time``: the step's compute
        without its copies (default: all of ``step_time``)."""
        self.counters.swapped_tokens += out.swap_in_tokens + out.swap_out_tokens
        self.view.last_iteration_time = step_time
        self.view.last_compute_time = step_time if compute_time is None else compute_time
        self.view.batch_query_tokens = out.query_tokens
        ended: list[TurnEnd] = []
        chunks = {id(req): chunk for req, chunk in out.prefills}
        for req in out.order:  # as vLLM: in the order scheduled, which orders the KV freed
            chunk = chunks.get(id(req))
            if chunk is None:
                self._emit_token(req, ended, from_prefill=False)
                continue
            # recomputed: the part of the chunk the context had before (computed, or sampled
            # and never fed back), as a served engine's prompt tokens less the minimum count it
            again = max(min(req.kv_tokens + chunk, req.seen_tokens) - req.kv_tokens, 0)
            req.recomputed_tokens += again
            self.counters.recomputed_tokens += again
            req.kv_tokens += chunk
            req.seen_tokens = max(req.seen_tokens, req.kv_tokens)
            if req.kv_tokens >= req.context_target:
                self._emit_token(req, ended, from_prefill=True)
        if ended:
            self.running = [r for r in self.running if r.state in (S.PREFILLING, S.DECODING)]
        self.iteration += 1
        return ended

    def note_first_token(self, req: Request) -> None:
        """``req``'s turn has its first token now (an engine that samples by itself says so)."""
        if req.first_token_time is None:
            req.first_token_time = self.now
            self.first_turn_waits.first_token(req, self.now)

    def _emit_token(self, req: Request, ended: list[TurnEnd], *, from_prefill: bool) -> None:
        # A token is sampled; its KV is computed by the step that feeds it back (the next
        # decode, or the next turn's prefill for a turn's last token), as in vLLM.  A decode
        # step computes the KV of the token sampled before it.
        if not from_prefill:
            req.kv_tokens += 1
        req.generated += 1
        req.seen_tokens = max(req.seen_tokens, req.context_target)
        if from_prefill:
            self.note_first_token(req)
            if req.state is S.PREFILLING:
                req.move_to(S.DECODING)
        if req.generated < req.segment.output_tokens:
            return
        self.policy.on_leave(req)
        if req.is_last_segment:
            self.finish(req)
            ended.append(TurnEnd(req, None))
        else:
            ended.append(TurnEnd(req, self.pause(req)))


def _shares(standing: Standing | None) -> dict[Tenant, float] | None:
    """The entitlements of ``standing``, where more than one tenant has work."""
    if standing is None:
        return None
    _, entitled = standing
    return entitled if len(entitled) > 1 else None
