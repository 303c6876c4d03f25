"""LAMPS (arXiv 2410.18248): predict each turn, choose its KV strategy up front, rank by memory × time.

At the start of each turn (arrival, or return from a tool into the queue) the policy predicts the
output before the tool call Ô and the tool's duration T̂, chooses
``argmin(W_preserve, W_swap, W_discard)`` at ``C = P + Ô`` under the engine's current load, and
ranks the request by the area under its predicted memory-over-time curve for that strategy
(:mod:`lamps_agent.area`), smallest first.

Starvation, ``starvation=``:

* ``counter`` (the paper's, ``lamps``): a request that waited ``starvation_threshold`` iterations
  (default 100) goes to the head of the queue, oldest first.  Under overload nearly everyone
  waits that long, and the order becomes FIFO (docs/benchmarks.md, "Starvation: counter vs
  aging").
* ``aging`` (``lamps-aging``): the rank decays with waiting time, ``ln(area) − wait/aging_s``;
  since every waiting key decays at the same rate, the order is the fixed key
  ``entered + aging_s · ln(area)`` (in seconds).  Bound: a request of area A is passed only by
  requests that entered the queue less than ``aging_s · ln(A / A')`` seconds after it (A'
  theirs, areas below 1 token·s count as 1), so never by one that entered more than
  ``aging_s · ln(A)`` after it.  ``aging_s`` is one turn's cycle (its decode and its tool, the
  median the engine measures, :class:`~lamps_agent.policies.timescale.ProgramLifetimes`), so
  the bound means the same at any time scale: a request is passed by one of 1/e its area only
  if that one entered less than a turn's cycle later.  The option ``aging_s`` fixes it; before
  a tool has returned it is ``DEFAULT_AGING_S`` (10 s).

``lamps-norank`` is the paper's ablation: the same predicted strategies, FCFS order.
"""

from __future__ import annotations

import math

from lamps_agent.area import Timing, TurnShape, turn_area
from lamps_agent.policies.base import Policy, least_waste_release, predicted_turn
from lamps_agent.policies.timescale import ProgramLifetimes, measured_or
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.strategy import choose_strategy

DEFAULT_STARVATION_THRESHOLD = 100
DEFAULT_AGING_S = 10.0
STARVATION_RULES = ("counter", "aging")


class LampsPolicy(Policy):
    """LAMPS as in the paper: predict each turn, choose its KV strategy by least waste, rank by
    predicted memory × time, the paper's starvation counter."""

    name = "lamps"
    rank_by_area = True
    default_starvation = "counter"

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        starvation_threshold: int | None = DEFAULT_STARVATION_THRESHOLD,
        starvation: str | None = None,
        aging_s: float | None = None,
    ) -> None:
        """``aging_s``: the aging rule's time in seconds; None: one turn's cycle as the engine
        measures it (``DEFAULT_AGING_S`` until a tool has returned)."""
        super().__init__(predictor=predictor, preset=preset)
        rule = self.default_starvation if starvation is None else starvation
        if rule not in STARVATION_RULES:
            raise ValueError(
                f"starvation must be one of {', '.join(STARVATION_RULES)}, got {rule!r}"
            )
        if starvation_threshold is not None and starvation_threshold < 1:
            raise ValueError("starvation_threshold must be >= 1, or None to disable")
        if aging_s is not None and not (math.isfinite(aging_s) and aging_s > 0):
            raise ValueError(f"aging_s must be > 0 (or None: measured), got {aging_s}")
        self.starvation = rule
        self.aging_s = aging_s
        self.lifetimes = ProgramLifetimes()  # the workload's time scale, as measured
        counter = self.rank_by_area and rule == "counter"
        self.starvation_threshold = starvation_threshold if counter else None

    def timing(self) -> Timing:
        cost = self.preset.cost
        budget = self.preset.token_budget
        per_token = self.preset.kv_bytes_per_token
        return Timing(
            tau=self.view.decode_step_time,
            prefill_seconds=lambda tokens: cost.prefill_time(tokens, budget),
            transfer_seconds=lambda tokens: cost.swap_time(tokens * per_token),
        )

    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)
        pred = predicted_turn(req)
        context = req.segment.prompt_tokens + pred.output_tokens
        if pred.has_tool_call:
            memory = self.view.memory
            req.strategy = choose_strategy(
                context_tokens=context,
                tool_duration=pred.tool_duration,
                preset=self.preset,
                load=self.view.load,
                swap_allowed=memory.can_swap_out(memory.blocks_for(int(context) + 1)),
            )
        else:
            req.strategy = None
        req.policy_rank = turn_area(
            TurnShape(
                prompt=req.segment.prompt_tokens,
                output=pred.output_tokens,
                has_tool=pred.has_tool_call,
                tool_duration=pred.tool_duration,
                returned=pred.returned_tokens,
                next_output=pred.output_tokens,  # as LAMPS' code: the post-tool turn reuses Ô
                resident=req.kv_tokens,
            ),
            req.strategy or KVStrategy.DISCARD,
            self.timing(),
        )

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        super().on_turn_end(req, outcome)
        service = self.turn_service_s(req, outcome)
        if outcome.tool is not None:  # a turn's cycle: its decode alone and its tool
            self.lifetimes.observe_cycle(service + outcome.tool_duration)
        self.after_turn(req, outcome, service)

    def after_turn(self, req: Request, outcome: Outcome, service_s: float) -> None:
        """For subclasses: a turn ended, ``service_s`` its :meth:`turn_service_s`."""

    def turn_service_s(self, req: Request, outcome: Outcome) -> float:
        """The turn's decode time without contention (batch 1, by the cost model)."""
        context = req.segment.prompt_tokens + outcome.output_tokens
        return outcome.output_tokens * self.preset.cost.iteration_time(0, 1, context)

    def aging_window(self) -> float:
        """``aging_s`` of the aging rule: the option's, else one turn's cycle as measured,
        else (no tool has returned yet) ``DEFAULT_AGING_S``."""
        if self.aging_s is not None:
            return self.aging_s
        return measured_or(self.lifetimes.cycle, DEFAULT_AGING_S)

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        if not self.rank_by_area:
            return (req.arrival_time, float(req.request_id))
        if self.starvation == "aging":
            entered = aged_entry(self.view.now, self.aging_window(), req.policy_rank)
            return (entered, req.arrival_time, float(req.request_id))
        return (req.policy_rank, req.arrival_time, float(req.request_id))

    def release_strategy(self, paused: PausedKV) -> KVStrategy:
        """A pin released under pressure: swap or discard, whichever wastes less."""
        return least_waste_release(self, paused)

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        """The strategy chosen when the turn started; for a pause nobody predicted (the predictor
        said "final answer"), least waste now at the predicted gap."""
        if paused.planned is not None:
            return paused.planned
        memory = self.view.memory
        return choose_strategy(
            context_tokens=paused.tokens,
            tool_duration=paused.remaining(self.view.now),
            preset=self.preset,
            load=self.view.load,
            swap_allowed=memory.can_swap_out(paused.blocks),
        )


class LampsNoRankPolicy(LampsPolicy):
    """The paper's ablation: LAMPS' predicted KV strategies, no ranking (first come, first
    served by the program's arrival)."""

    name = "lamps-norank"
    rank_by_area = False


class LampsAgingPolicy(LampsPolicy):
    """LAMPS with aging instead of the paper's starvation counter (the project's default LAMPS
    variant, docs/scheduling.md)."""

    name = "lamps-aging"
    default_starvation = "aging"


def aged_entry(now: float, aging_s: float, area: float) -> float:
    """The aging rule's key in seconds: ``now + aging_s · ln A`` (areas below 1 token·s count
    as 1), the order of ``ln A − wait / aging_s`` among requests that wait together."""
    return now + aging_s * math.log(max(area, 1.0))
