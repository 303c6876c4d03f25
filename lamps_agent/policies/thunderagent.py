"""``thunderagent``: ThunderAgent (arXiv 2602.13692; code: ThunderAgent-org/ThunderAgent).

ThunderAgent schedules whole programs.  Each is *reasoning* (a turn on the engine) or *acting* (in
a tool call), and *active* (its tokens reserved on the engine) or *paused* (in the global waiting
queue, its KV evictable).  The engine serves the requests of active programs first come, first
served; the KV of an active acting program is kept (here: pinned) through its tool call.  Each
rule, with its source (docs/scheduling.md, "`thunderagent`"):

* **Capacity** (paper Eq. 6; code ``BackendState.remaining_capacity``): the active programs'
  tokens plus ``BUFFER_PER_PROGRAM`` = 100 each must stay within ``λ · C`` (C the engine's KV
  tokens, λ = 1 as the paper sets both watermarks).
* **New programs** (``_select_backend_for_new_program``): active at once if no program waits
  and the capacity holds its tokens plus the buffer, else paused until a resume.
* **Every Δt = 5 s** (``_scheduled_check``): resume, then pause while over capacity.
* **Resume** (§4.3.1, Eq. 10; ``_greedy_resume``): paused programs with a pending turn first,
  then new programs, then acting ones, each group smallest first; taken while their tokens plus
  the buffer fit in the remaining capacity, then placed best-fit-decreasing (largest first onto
  the engine with the most room).  The remaining capacity counts an acting program's tokens
  with the decay ``2^−t`` after t seconds in its tool (f(t) of §4.3.1, the paper's setting).
* **Pause** (Eq. 11; ``_pause_until_safe``): active acting programs first, smallest first (their
  pins are discarded, the blocks left to the prefix cache); then reasoning programs, smallest
  first, are *marked* and paused when their turn ends in a tool call — never preempted.
* **Liveness** (``_wait_for_resume``): a turn held 1800 s is resumed whatever the capacity.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from lamps_agent.policies.base import Policy, TenantShares
from lamps_agent.policies.program import program_key, program_step
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV

BUFFER_PER_PROGRAM = 100  # tokens, ThunderAgent/backend/state.py
SCHEDULER_INTERVAL_S = 5.0  # Δt: --scheduler-interval, and the paper's setting
WAIT_TIMEOUT_S = 1800.0  # _wait_for_resume's timeout
DECAY_BASE = 2.0  # f(t) = 2^-t, the paper's setting (--use-acting-token-decay)
OPEN, HELD = 0.0, 1.0  # the key's class: turns of active programs, of paused ones


class Status(enum.Enum):
    REASONING = "reasoning"
    ACTING = "acting"


@dataclass(slots=True)
class ThunderProgram:
    status: Status
    active: bool
    tokens: int  # context tokens: the turn's prompt while reasoning, the context when acting
    first_turn: bool
    request: Request | None = None  # the turn in flight (its tokens grow as it decodes)
    acting_since: float = 0.0
    marked: bool = False  # reasoning, to pause at its next tool call
    waiting_since: float | None = None  # paused with a turn waiting for its resume

    def live_tokens(self) -> int:
        req = self.request
        if self.status is Status.REASONING and req is not None:
            return max(self.tokens, req.segment.prompt_tokens + req.generated)
        return self.tokens


def best_fit_decreasing(sizes: Sequence[float], rooms: Sequence[float]) -> list[int | None]:
    """ThunderAgent's placement: the largest item first, each onto the bin with the most room
    left (bins with at most ``BUFFER_PER_PROGRAM`` left are full).  Returns each item's bin, or
    None for an item that fits nowhere."""
    left = list(rooms)
    placed: list[int | None] = [None] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        open_bins = [b for b in range(len(left)) if left[b] > BUFFER_PER_PROGRAM]
        if not open_bins:
            break
        best = max(open_bins, key=lambda b: left[b])
        if sizes[i] <= left[best]:
            placed[i] = best
            left[best] -= sizes[i]
    return placed


class _Gate:
    """Active programs' turns pass; paused ones wait for a resume (or the timeout).  Turns that
    entered while their program was paused sort after every other (:meth:`queue_key`), so the
    walk ends at a held turn once every resumed one behind it was seen."""

    def __init__(self, policy: ThunderAgentPolicy) -> None:
        self._policy = policy
        self._found = 0  # held entries of resumed programs seen this walk
        self._closed = False

    def allow(self, req: Request) -> bool:
        policy = self._policy
        ok = policy.may_run(req)
        if req.request_id in policy.held:
            if ok:
                self._found += 1
            else:
                self._closed = self._found >= policy.released
        return ok

    @property
    def exhausted(self) -> bool:
        return self._closed

    closes_tenant = False  # ThunderAgent's pause and resume are per program


class ThunderAgentPolicy(Policy):
    name = "thunderagent"
    gates_admission = True
    adjusts_paused = True  # paused acting programs give up their pins

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        interval_s: float = SCHEDULER_INTERVAL_S,
        watermark: float = 1.0,
        acting_decay: bool = True,
        wait_timeout_s: float = WAIT_TIMEOUT_S,
    ) -> None:
        super().__init__(predictor=predictor, preset=preset)
        if not interval_s >= 0 or not wait_timeout_s > 0:
            raise ValueError("need interval_s >= 0 and wait_timeout_s > 0")
        if not 0 < watermark <= 4:
            raise ValueError(f"watermark must be in (0, 4], got {watermark}")
        self.interval_s = interval_s
        self.watermark = watermark
        self.acting_decay = acting_decay
        self.wait_timeout_s = wait_timeout_s
        self.programs: dict[Hashable, ThunderProgram] = {}
        # Waiting turns that entered while their program was paused, and how many of those
        # programs are active again (the gate's walk ends once it has seen them all).
        self.held: dict[int, ThunderProgram] = {}
        self.released = 0
        self._next_check = interval_s  # the engine's clock starts at 0 (the first check: Δt)
        self.resumed = 0
        self.paused_count = 0
        self.marked_count = 0

    # -- capacity --------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> float:
        memory = self.view.memory
        return self.watermark * memory.num_gpu_blocks * memory.block_size

    def _active(self) -> list[ThunderProgram]:
        return [p for p in self.programs.values() if p.active]

    def remaining_capacity(self, *, decay: bool = False, future_release: bool = False) -> float:
        """``λC − Σ_active (tokens + buffer)``; ``decay``: acting tokens weighted ``2^−t``;
        ``future_release``: marked programs counted as already paused."""
        now = self.view.now
        used = 0.0
        for p in self._active():
            if future_release and p.marked:
                continue
            tokens = float(p.live_tokens())
            if decay and p.status is Status.ACTING:
                tokens *= DECAY_BASE ** -(max(now - p.acting_since, 0.0))
            used += tokens + BUFFER_PER_PROGRAM
        return self.capacity_tokens - used

    # -- the periodic check ------------------------------------------------------------------
    def _tick(self) -> None:
        """The periodic check, every ``interval_s``; at once on an idle engine (nothing
        running): the simulator has no event to wake it at the next check."""
        now = self.view.now
        if now >= self._next_check:
            self._next_check = now + self.interval_s
        elif self.view.num_running > 0 or all(p.active for p in self.programs.values()):
            return
        self.resume()
        if self.remaining_capacity() < 0:
            self.pause_until_safe()

    def resume(self) -> list[ThunderProgram]:
        """Resume paused programs by priority into the remaining capacity (best fit)."""
        room = self.remaining_capacity(decay=self.acting_decay)
        if room <= BUFFER_PER_PROGRAM:
            return []
        waiting = sorted(
            (p for p in self.programs.values() if not p.active), key=lambda p: p.live_tokens()
        )
        pending = [p for p in waiting if not p.first_turn and p.status is Status.REASONING]
        new = [p for p in waiting if p.first_turn]
        acting = [p for p in waiting if not p.first_turn and p.status is Status.ACTING]
        chosen: list[ThunderProgram] = []
        total = 0.0
        for p in pending + new + acting:
            need = p.live_tokens() + BUFFER_PER_PROGRAM
            if total + need <= room:
                chosen.append(p)
                total += need
        places = best_fit_decreasing([p.live_tokens() + BUFFER_PER_PROGRAM for p in chosen], [room])
        resumed = [p for p, where in zip(chosen, places, strict=True) if where is not None]
        for p in resumed:
            self._activate(p)
        return resumed

    def pause_until_safe(self) -> None:
        """Pause acting programs (smallest first), then mark reasoning ones (smallest first),
        until the active programs fit the capacity."""
        while self.remaining_capacity(future_release=True) < 0:
            active = self._active()
            acting = [p for p in active if p.status is Status.ACTING]
            if acting:
                victim = min(acting, key=lambda p: p.live_tokens())
                victim.active = False
                self.paused_count += 1
                continue
            reasoning = [p for p in active if p.status is Status.REASONING and not p.marked]
            if not reasoning:
                return
            min(reasoning, key=lambda p: p.live_tokens()).marked = True
            self.marked_count += 1

    def _activate(self, p: ThunderProgram) -> None:
        p.active = True
        p.waiting_since = None
        self.resumed += 1
        if p.request is not None and self.held.get(p.request.request_id) is p:
            self.released += 1

    # -- the waiting order -----------------------------------------------------------------
    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        """FCFS by the time the turn reached the engine (a tool's return is a new request to
        vLLM), turns of paused programs after all others: they reach vLLM only when resumed."""
        p = self.programs.get(program_key(req))
        cls = HELD if p is not None and not p.active else OPEN
        entered = self.view.now if resumed else req.arrival_time
        return (cls, entered, float(req.request_id))

    def on_enqueue(self, req: Request) -> None:
        p = self.programs.get(program_key(req))
        if p is not None and req.queue_key[0] == HELD and req.request_id not in self.held:
            self.held[req.request_id] = p
            if p.active:  # a resumed program's turn, preempted back into the queue
                self.released += 1

    def on_admit(self, req: Request) -> None:
        p = self.held.pop(req.request_id, None)
        if p is not None and p.active:
            self.released -= 1

    # -- admission -------------------------------------------------------------------------
    def admission_gate(self, *, shares: TenantShares | None = None) -> _Gate:
        self._tick()
        return _Gate(self)

    def may_run(self, req: Request) -> bool:
        p = self.programs.get(program_key(req))
        if p is None or p.active:
            return True
        if p.waiting_since is not None and self.view.now - p.waiting_since >= self.wait_timeout_s:
            self._activate(p)
            return True
        return False

    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)
        key = program_key(req)
        p = self.programs.get(key)
        tokens = req.segment.prompt_tokens
        if p is None:
            first = program_step(req) == 0
            p = ThunderProgram(
                status=Status.REASONING, active=False, tokens=tokens, first_turn=first
            )
            self.programs[key] = p
            nobody_waits = all(q.active for q in self.programs.values() if q is not p)
            if nobody_waits and self.remaining_capacity() >= tokens + BUFFER_PER_PROGRAM:
                p.active = True
        else:
            p.first_turn = False
            p.status = Status.REASONING
            p.tokens = tokens
        p.request = req
        if not p.active:
            p.waiting_since = self.view.now

    # -- tool calls --------------------------------------------------------------------------
    def on_tool_call(self, req: Request, gap: float) -> None:
        p = self.programs.get(program_key(req))
        if p is None:
            return
        p.status = Status.ACTING
        p.acting_since = self.view.now
        p.tokens = req.segment.prompt_tokens + req.generated
        if p.marked:
            p.marked = False
            p.active = False
            self.paused_count += 1

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        """An active program keeps its KV through the tool call; a paused one leaves it to the
        prefix cache."""
        p = self.programs.get(paused.key)
        return KVStrategy.PRESERVE if p is not None and p.active else KVStrategy.DISCARD

    def pin_ttl(self, paused: PausedKV) -> float | None:
        return math.inf  # kept until the program is paused (or the memory is needed)

    def adjust_paused(self, preserved: Sequence[PausedKV]) -> list[tuple[PausedKV, KVStrategy]]:
        self._tick()
        changes: list[tuple[PausedKV, KVStrategy]] = []
        for paused in preserved:
            p = self.programs.get(paused.key)
            if p is not None and not p.active:
                changes.append((paused, KVStrategy.DISCARD))
        return changes

    def pin_release_key(self, paused: PausedKV) -> float:
        """Under memory pressure the smallest pin goes first (the pause order, Eq. 11)."""
        return -float(paused.tokens)

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        super().on_turn_end(req, outcome)
        if outcome.tool is None:
            self.programs.pop(program_key(req), None)  # released

    def state(self) -> dict[str, float]:
        active = self._active()
        return {
            "programs": len(self.programs),
            "active": len(active),
            "acting": sum(1 for p in active if p.status is Status.ACTING),
            "paused": len(self.programs) - len(active),
            "resumed": self.resumed,
            "paused_total": self.paused_count,
            "marked_total": self.marked_count,
        }
