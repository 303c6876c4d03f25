"""``ProgramPolicy``: the ``program`` policy, composed of its parts (the package's docstring says
what it does; each part's module, how).

LAMPS (the base class) predicts each turn and plans its KV strategy; this class adds, per
program: the footprint (:mod:`.footprint`), the programs in flight (:mod:`.inflight`), the
admission gate (:mod:`.gate`), the rank (:mod:`.area`, :mod:`.keys`), the engage switch
(:mod:`.load`) and the pin's time to live (:mod:`.ttl`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.policies.base import AdmissionGate, TenantShares
from lamps_agent.policies.lamps import LampsPolicy
from lamps_agent.policies.program.area import Aging, remaining_area
from lamps_agent.policies.program.footprint import Footprint, FootprintPredictor, capped
from lamps_agent.policies.program.gate import ProgramGate
from lamps_agent.policies.program.inflight import ProgramsInFlight
from lamps_agent.policies.program.keys import (
    ADMITTED,
    NEW,
    as_admitted,
    lamps_aging_key,
    program_key,
    program_queue_key,
    program_step,
)
from lamps_agent.policies.program.load import EngageSwitch
from lamps_agent.policies.program.ttl import (
    PinDeadlines,
    PinLosses,
    ToolDurations,
    risk_weighted_pin_cost,
    ttl_by_cost_benefit,
)
from lamps_agent.policies.timescale import ProgramLifetimes, measured_or
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.strategy import pick_least, strategy_wastes


@dataclass(slots=True)
class _TurnFigures:
    """What a turn's start computed, kept until the turn ends."""

    area: float  # LAMPS' area of the turn (the order while the rules are off)
    term: float  # the program's footprint term from this turn
    peak: float  # and its predicted peak context


class ProgramPolicy(LampsPolicy):
    """``program``: program-aware admission and ranking (after WAIT) with per-call KV handling
    (LAMPS)."""

    name = "program"
    gates_admission = True
    adjusts_paused = True  # pins past their time to live are swapped or discarded
    # The scheduler's backstop on a pin comes this fraction of its time to live after the
    # policy's own deadline (and at least two decode steps: the policy looks once per step).
    TTL_GRACE_FRACTION = 0.5
    STALE_LIFETIMES = 30.0  # a program not heard of in this many lifetimes is forgotten
    # Before the workload's time scale is known (no tool has returned), these stand in:
    PRIOR_MAX_AGE_S = 60.0  # the aging bound of new programs
    PRIOR_TURN_MAX_AGE_S = 20.0  # ... of later turns
    PRIOR_TOOL_GRACE_S = 30.0  # a program in a tool: forgotten at 2 x its predicted time + this
    PRIOR_STALE_S = 1800.0  # a program not heard of in this long: forgotten

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        target_utilization: float = 0.9,
        max_age_s: float | None = None,
        turn_max_age_s: float | None = None,
        footprint: FootprintPredictor | None = None,
        stale_s: float | None = None,
        open_below: float = 0.5,
        patience: int | None = None,
        engage_at: float = 0.5,
        commit_at: float = 1.0,
        load_window_s: float | None = None,
    ) -> None:
        """``footprint``: the footprint predictor (a server may seed one from the tool
        registry's turns); the other options are described in docs/scheduling.md."""
        super().__init__(
            predictor=predictor, preset=preset, starvation_threshold=None, starvation="aging"
        )
        if not 0 < target_utilization <= 4:
            raise ValueError("target_utilization must be in (0, 4]")
        if any(v is not None and not v > 0 for v in (max_age_s, turn_max_age_s)):
            raise ValueError("max_age_s and turn_max_age_s must be > 0, or None (derived)")
        if stale_s is not None and not stale_s > 0:
            raise ValueError("stale_s must be > 0, or None (derived)")
        if not 0 <= open_below <= 1:
            raise ValueError("open_below must be in [0, 1]")
        if patience is not None and patience < 1:
            raise ValueError("patience must be >= 1 iterations, or None")
        self.starvation_threshold = None  # aging bounds every wait instead
        self.target_utilization = target_utilization
        self.max_age_s = max_age_s
        self.turn_max_age_s = turn_max_age_s
        self.stale_s = stale_s
        self.open_below = open_below
        self.patience = patience
        self.max_context = float("inf")  # the engine's context limit (limit_context)
        self.footprints = footprint or FootprintPredictor()
        self.lifetimes = ProgramLifetimes(expected_turns=self.footprints.prior_turns)
        self.durations = ToolDurations()
        self.switch = EngageSwitch(
            engage_at=engage_at,
            commit_at=commit_at,
            window_s=load_window_s,
            lifetimes=self.lifetimes,
        )
        self.in_flight = ProgramsInFlight()
        self.aging = Aging()
        self.pins = PinDeadlines()
        self.pin_losses = PinLosses()
        self.counters_held = 0  # new programs refused by the gate (one per refusal)
        self.counters_waited_out = 0  # held new programs let through by patience_for
        self._turns: dict[int, _TurnFigures] = {}  # by request id, from its turn's start

    # -- the switch's and the table's figures ----------------------------------------------
    @property
    def engaged(self) -> bool:
        return self.switch.engaged

    @property
    def engagements(self) -> int:
        return self.switch.engagements

    @property
    def load(self) -> float:
        return self.switch.load

    @property
    def commitment(self) -> float:
        return self.switch.commitment

    @property
    def committed(self) -> float:
        """Σ footprint terms of every program in flight."""
        return self.in_flight.committed

    # -- the budget and the footprint ------------------------------------------------------
    @property
    def budget_tokens(self) -> float:
        """``u · C``: the fluid footprints in flight may fill this much of the KV capacity (the
        engine's: the simulator's blocks, or vLLM's block pool as the plug-in mirrors it)."""
        return self.target_utilization * self._capacity_tokens

    @property
    def open_below_tokens(self) -> float:
        """Below this much KV in use (``open_below × C``) a new program is admitted whatever the
        fluid threshold says, if even its predicted peak fits: work conservation at light load."""
        return self.open_below * self._capacity_tokens

    @property
    def _capacity_tokens(self) -> int:
        memory = self.view.memory
        return memory.num_gpu_blocks * memory.block_size

    def _predict_footprint(self, req: Request) -> Footprint:
        fp = self.footprints.for_request(req)
        return capped(fp, context=req.segment.prompt_tokens, max_context=self.max_context)

    @staticmethod
    def _term(req: Request, fp: Footprint) -> float:
        return (req.segment.prompt_tokens + fp.peak) / 2

    def footprint_term(self, req: Request) -> float:
        """``(c + P) / 2``: the program's fluid mean KV footprint for the rest of its life."""
        turn = self._turns.get(req.request_id)
        if turn is None:  # predicted before it was enqueued (tests, an engine's own path)
            return self._term(req, self._predict_footprint(req))
        return turn.term

    def predicted_peak(self, req: Request) -> float:
        turn = self._turns.get(req.request_id)
        return self._predict_footprint(req).peak if turn is None else turn.peak

    def patience_for(self, req: Request) -> int:
        """Iterations the gate may hold the new program ``req`` (over its threshold, or behind a
        later turn waiting for memory): the operator's ``patience``, else rent or buy.  Holding
        it saves at most one recomputation of the KV its admission would push out — its
        footprint term, prefilled again while every running request (and the evicted one)
        waits; each iteration held costs it one decode step.  Held until its wait has cost as
        much, then admitted, it pays at most twice the better choice in hindsight (the
        ski-rental bound).  Both sides are the cost model's times: the count is a ratio of costs
        and does not move with the time scale."""
        if self.patience is not None:
            return self.patience
        view = self.view
        recompute = self.preset.cost.prefill_time(
            self.footprint_term(req), self.preset.token_budget
        )
        step = max(view.decode_step_time, 1e-6)
        return max(1, math.ceil(recompute * (view.num_running + 1) / step))

    def limit_context(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError(f"context limit must be >= 1 token, got {tokens}")
        self.max_context = float(tokens)

    def resident_commitment(self) -> float:
        """The fluid footprint the gate counts: every program in flight, except those waiting
        on a tool with their KV off the GPU (swapped or discarded).  WAIT's fluid load is the
        time average of the memory held, and a program in a long tool without its KV holds
        none; counting it whole (as the first version did) held the gate shut on the INFERCEPT
        traces, whose programs spend most of their life in tools.  Its footprint counts again
        from its next turn's start, which waits for free memory ahead of every new program."""
        return self.in_flight.resident(self.view.pinned)

    # -- a turn starts: its figures, its program, its rank ---------------------------------
    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)  # LAMPS: the turn's prediction, planned strategy and area
        area = req.policy_rank
        fp = self._predict_footprint(req)
        term = self._term(req, fp)
        self._turns[req.request_id] = _TurnFigures(area=area, term=term, peak=fp.peak)
        flight = self.in_flight.find(program_key(req))
        if flight is not None:
            self.in_flight.turn_started(flight, term=term, turn=req.request_id, now=self.view.now)
        elif program_step(req) > 0:  # dropped as stale (or never seen), yet a later turn came
            self._enter(req, term, first_prompt=req.program.segments[0].prompt_tokens)
        req.policy_rank = remaining_area(req, fp, self.timing())

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        if not self.engaged:
            turn = self._turns.get(req.request_id)
            area = req.policy_rank if turn is None else turn.area
            return lamps_aging_key(req, now=self.view.now, aging_s=self.aging_window(), area=area)
        cls = ADMITTED if program_key(req) in self.in_flight else NEW
        return self._aged_key(req, req.policy_rank, cls)

    def max_age(self, cls: float) -> float:
        """The aging bound of a class in seconds: no waiting request is passed by one that
        entered its class more than this later.  The option's, else derived from the time scale
        the engine measures (:class:`ProgramLifetimes`): a new program's is one program lifetime,
        a later turn's one turn's cycle (its decode and its tool), so the bound means the same
        at any time scale; before a tool has returned, the prior (60 s and 20 s)."""
        option, derived, prior = (
            (self.max_age_s, self.lifetimes.median, self.PRIOR_MAX_AGE_S)
            if cls == NEW
            else (self.turn_max_age_s, self.lifetimes.cycle, self.PRIOR_TURN_MAX_AGE_S)
        )
        if option is not None:
            return option
        return measured_or(derived, prior)

    def stale_after(self) -> float:
        """Seconds after which a program not heard of is forgotten: the option's, else
        ``STALE_LIFETIMES`` program lifetimes (:class:`ProgramLifetimes`; before any, the prior
        30 minutes)."""
        if self.stale_s is not None:
            return self.stale_s
        return measured_or(self.STALE_LIFETIMES * self.lifetimes.median, self.PRIOR_STALE_S)

    def tool_grace(self) -> float:
        """How long past twice its predicted duration a program in a tool is waited for before
        it is forgotten: one program lifetime (:class:`ProgramLifetimes`; before any, 30 s)."""
        return measured_or(self.lifetimes.median, self.PRIOR_TOOL_GRACE_S)

    def _aged_key(self, req: Request, area: float, cls: float) -> tuple[float, ...]:
        max_age = self.max_age(cls)
        handicap = self.aging.handicap(area, max_age, req.program.tenant)
        return program_queue_key(req, cls=cls, entered=self.view.now + handicap)

    def preemption_key(self, req: Request) -> tuple[float, ...]:
        """While engaged, the most recently admitted program is preempted first."""
        if not self.engaged:
            return req.queue_key
        flight = self.in_flight.find(program_key(req))
        seq = flight.admitted_seq if flight is not None else float("inf")
        return (float(seq), float(req.request_id))

    # -- admission -------------------------------------------------------------------------
    def admission_gate(self, *, shares: TenantShares | None = None) -> AdmissionGate | None:
        """The gate, if engaged; with ``shares``, each tenant is guaranteed its share of the
        budget (:class:`ProgramGate`)."""
        self._drop_stale()
        resident = self.resident_commitment()
        memory = self.view.memory
        engaged = self.switch.update(
            now=self.view.now,
            used=memory.used_gpu_blocks / max(memory.num_gpu_blocks, 1),
            committed=resident / max(self.budget_tokens, 1.0),
        )
        if not engaged:
            return None
        if shares is None or len(shares) < 2:
            return ProgramGate(self, resident=resident)
        by_tenant = self.in_flight.resident_by_tenant(self.view.pinned)
        return ProgramGate(self, resident=resident, shares=shares, resident_by_tenant=by_tenant)

    def on_admit(self, req: Request) -> None:
        flight = self.in_flight.find(program_key(req))
        if flight is None:
            self._enter(req, self.footprint_term(req), first_prompt=req.segment.prompt_tokens)
            req.queue_key = as_admitted(req.queue_key)  # if preempted, back as a later turn
        else:
            flight.waiting = False
            flight.last_seen = self.view.now

    def _enter(self, req: Request, term: float, *, first_prompt: int) -> None:
        self.in_flight.enter(
            program_key(req),
            agent=req.program.agent,
            tenant=req.program.tenant,
            first_prompt=first_prompt,
            term=term,
            turn=req.request_id,
            now=self.view.now,
        )

    def _drop_stale(self) -> None:
        """Forget programs that will not come back: aborted, not heard of in ``stale_s``, or
        still in a tool at twice its predicted duration plus 30 s.  In a serving engine an
        aborted session never finishes, and the vLLM plug-in makes each turn a request of its
        own, so the turn that paused never resumes; their footprints would hold the gate shut.
        A program in the simulator that does come back is counted again from its next turn."""
        for flight in self.in_flight.drop_stale(now=self.view.now, stale_s=self.stale_after()):
            if flight.left:
                self._turns.pop(flight.turn, None)

    # -- where a turn goes ------------------------------------------------------------------
    def on_leave(self, req: Request) -> None:
        """The turn left the GPU: a finish, a pause or a preemption says where at once; a
        program's current turn that stays unaccounted for was aborted (:meth:`_drop_stale`
        forgets the program).  Another request of the same session (turns side by side) does
        not speak for the program."""
        flight = self.in_flight.find(program_key(req))
        if flight is not None and flight.turn == req.request_id:
            flight.left = True

    def on_abort(self, req: Request) -> None:
        """An aborted current turn ends its program now, wherever it was (a turn aborted while
        it waited never left the GPU, so :meth:`on_leave` cannot say so)."""
        key = program_key(req)
        flight = self.in_flight.find(key)
        if flight is not None and flight.turn == req.request_id:
            self.in_flight.leave(key)
            self._turns.pop(req.request_id, None)

    def on_enqueue(self, req: Request) -> None:
        flight = self.in_flight.find(program_key(req))
        if flight is not None and flight.turn == req.request_id:
            flight.left = False
            flight.waiting = True  # alive while it waits, however long (InFlight.waiting)

    def after_turn(self, req: Request, outcome: Outcome, service_s: float) -> None:
        # LAMPS' on_turn_end has fed the predictor and the turn's cycle
        self._turns.pop(req.request_id, None)  # computed afresh at the next turn's start
        if outcome.tool is not None:  # the program goes on (its pause: on_tool_call)
            self.durations.observe(outcome.tool, outcome.tool_duration)
            flight = self.in_flight.find(program_key(req))
            if flight is not None:
                flight.service_s += service_s + outcome.tool_duration
            return
        flight = self.in_flight.leave(program_key(req))
        if flight is not None:
            self.lifetimes.observe(flight.service_s + service_s)
            self.footprints.observe(
                agent=flight.agent,
                turns=program_step(req) + 1,
                first_prompt=flight.first_prompt,
                peak=req.segment.prompt_tokens + outcome.output_tokens,
            )

    def on_tool_call(self, req: Request, gap: float) -> None:
        """The program is in a tool now: forgotten if it is not back by ``2 · gap`` plus
        :meth:`tool_grace`, and off the gate's count unless its KV stays pinned
        (:meth:`resident_commitment`)."""
        flight = self.in_flight.find(program_key(req))
        if flight is not None:
            self.in_flight.tool_called(flight, now=self.view.now, gap=gap, grace=self.tool_grace())

    # -- KV handling per call ------------------------------------------------------------------
    def _alternatives(self, paused: PausedKV, remaining: float) -> dict[KVStrategy, float]:
        """Waste of not keeping the KV: discard, and swap where the host has room."""
        memory = self.view.memory
        wastes = strategy_wastes(
            context_tokens=paused.tokens,
            tool_duration=remaining,
            preset=self.preset,
            load=self.view.load,
            swap_allowed=memory.can_swap_out(paused.blocks),
        )
        wastes.pop(KVStrategy.PRESERVE)
        return wastes

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        """Pin for Continuum's cost-benefit time to live when that beats the least waste of not
        pinning; else swap or discard, whichever wastes less.  The pin's cost counts the share
        of recent pins given up under memory pressure (:class:`PinLosses`): such a pin ends as
        a discard, so as pressure builds a long context goes to the host instead."""
        if not self.engaged:
            return super().on_pause(paused)  # LAMPS: the strategy planned at the turn's start
        predicted = paused.remaining(self.view.now)
        wastes = self._alternatives(paused, predicted)
        alternative = pick_least(wastes)
        tau, cost = ttl_by_cost_benefit(
            self.durations.samples(paused.tool, predicted),
            context_tokens=paused.tokens,
            fallback_waste=wastes[alternative],
        )
        cost = risk_weighted_pin_cost(
            cost, loss_share=self.pin_losses.share, discard_waste=wastes[KVStrategy.DISCARD]
        )
        if tau > 0 and cost < wastes[alternative]:
            self.pins.set(paused.key, now=self.view.now, ttl=tau)
            self.pin_losses.given()
            return KVStrategy.PRESERVE
        return alternative

    def release_strategy(self, paused: PausedKV) -> KVStrategy:
        """A pin given up under memory pressure: counted as lost (:class:`PinLosses`), and
        swapped or discarded by least waste as in ``lamps``."""
        self.pin_losses.lost()
        return super().release_strategy(paused)

    def pin_ttl(self, paused: PausedKV) -> float | None:
        """The scheduler's expiry is a backstop after the policy's own deadline ``τ``, at which
        :meth:`adjust_paused` swaps or discards the pin, whichever wastes less: ``τ`` plus
        ``TTL_GRACE_FRACTION · τ``, and at least two decode steps (the policy looks once per
        step), so the backstop scales with the pin's time and not with a wall clock."""
        tau = self.pins.take_ttl(paused.key)
        if tau is None:
            return None
        return tau + max(self.TTL_GRACE_FRACTION * tau, 2 * self.view.decode_step_time)

    def adjust_paused(self, preserved: Sequence[PausedKV]) -> list[tuple[PausedKV, KVStrategy]]:
        now = self.view.now
        changes: list[tuple[PausedKV, KVStrategy]] = []
        for paused in self.pins.due(preserved, now):
            # The tool outlived its pin: the rest of its wait, predicted from now on.
            wastes = self._alternatives(paused, max(paused.remaining(now), 1.0))
            changes.append((paused, pick_least(wastes)))
        return changes

    # -- reporting ---------------------------------------------------------------------------
    def state(self) -> dict[str, float]:
        """The policy's figures now (programs that will not come back forgotten first): programs
        in flight (and how many of them are in a tool), their committed fluid footprint, the
        part the gate counts (KV on the GPU) against the budget, admissions and refusals, how
        many agents' footprints are learned rather than the prior's, and the engage rule's
        state as of the gate's last look (with its averaging window)."""
        self._drop_stale()
        in_flight = self.in_flight
        window = self.switch.window()
        figures = {
            "in_flight": len(in_flight),
            "in_flight_in_tool": sum(1 for f in in_flight.values() if f.in_tool),
            "committed_tokens": round(in_flight.committed, 1),
            "committed_resident_tokens": round(self.resident_commitment(), 1),
            "budget_tokens": round(self.budget_tokens, 1),
            "admissions": in_flight.admissions,
            "gate_refusals": self.counters_held,
            "gate_waited_out": self.counters_waited_out,
            "agents_learned": self.footprints.learned(),
            "engaged": int(self.engaged),
            "engagements": self.engagements,
            "load": round(self.load, 3),
            "commitment": round(self.commitment, 3),
            "max_age_s": round(self.max_age(NEW), 3),
            "turn_max_age_s": round(self.max_age(ADMITTED), 3),
            "aging_s": round(self.aging_window(), 3),  # the order while disengaged
            "pins_lost_share": round(self.pin_losses.share, 3),
        }
        if not math.isnan(window):  # none until a tool has returned
            figures["load_window_s"] = round(window, 3)
        return figures
