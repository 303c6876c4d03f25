"""The policy contract: what a scheduling policy decides, independent of the engine that executes.

The core :class:`~lamps_agent.scheduler.core.Scheduler` owns the queues, the paused turns and the
KV accounting; whichever engine drives it (the simulator, or vLLM through the plug-in), it asks
its policy the same questions and does what it is told:

* ``queue_key(req)`` — where a request stands in the waiting queue (smaller first), fixed when it
  enters; ``starvation_threshold`` bounds how many iterations anyone waits behind better keys;
* ``on_pause(paused)`` — preserve, discard or swap the KV of a turn that ended in a tool call;
* ``adjust_paused(preserved)`` — once per iteration, revisit paused turns still holding KV
  (only if ``adjusts_paused``);
* ``pin_release_key(paused)`` — under memory pressure, which preserved KV goes first, and
  ``release_strategy(paused)`` — whether it is swapped or discarded;
* ``admission_gate()`` — how many of which requests may be admitted this iteration (only if
  ``gates_admission``);
* ``hold(req)`` — keep a resident request from advancing this iteration (only if ``uses_holds``).

Paused turns reach a policy as engine-neutral :class:`~lamps_agent.scheduler.paused.PausedKV`
objects; predictions only through its :class:`~lamps_agent.predictors.base.Predictor`.  A policy
declares what it needs by the capability flags, never by its name: an engine that cannot honour
a flag says so at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from lamps_agent.kv_memory import KVMemory
from lamps_agent.predictors.base import Outcome, Prediction, PredictionQuery, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.waste import EngineLoad, discard_waste, swap_waste

# Each tenant's entitlement, a fraction (``None``: the one tenant of a deployment without them).
TenantShares = Mapping[str | None, float]

if TYPE_CHECKING:
    from lamps_agent.scheduler.paused import PausedKV


@dataclass(slots=True)
class EngineView:
    """The engine state a policy may read.  The engine keeps it current."""

    preset: Preset
    memory: KVMemory
    now: float = 0.0
    iteration: int = 0
    running_tokens: int = 0  # KV tokens held by resident, advancing requests
    num_running: int = 0
    batch_query_tokens: int = 0  # query tokens of the last iteration
    last_iteration_time: float = 0.0  # the last step's duration (compute and copies)
    last_compute_time: float = 0.0  # the last step's compute alone
    # The paused turns whose KV is pinned on the GPU now (keyed by request id in the
    # simulator, by session id in vLLM): the engine's own table, read-only to policies.
    pinned: Iterable[PausedKV] = ()

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(
            running_tokens=self.running_tokens, batch_query_tokens=self.batch_query_tokens
        )

    @property
    def decode_step_time(self) -> float:
        """Seconds of one decode iteration at the current batch (τ of the area integral)."""
        cost = self.preset.cost
        return cost.iteration_time(0, max(self.num_running, 1), self.running_tokens)


class AdmissionGate(Protocol):
    """Asked, in queue order, whether each waiting request may be admitted now."""

    def allow(self, req: Request) -> bool: ...

    @property
    def exhausted(self) -> bool:
        """True once no later request can be allowed either (the engine stops asking)."""
        ...

    @property
    def closes_tenant(self) -> bool:
        """True when the last refusal holds every later request of the refused request's
        tenant (a per-tenant budget, given ``shares``): the walk skips that tenant's rest."""
        ...


class Policy:
    """Defaults: FCFS by original arrival, discard at every tool call, no gate, no holds."""

    name: ClassVar[str] = "base"
    adjusts_paused: ClassVar[bool] = False  # the scheduler calls adjust_paused only if True
    uses_holds: ClassVar[bool] = False  # ... begin_iteration and hold only if True
    gates_admission: ClassVar[bool] = False  # ... admission_gate only if True
    # vLLM's automatic prefix caching in the simulated engine (on in vLLM V1 by default).
    prefix_caching: ClassVar[bool] = True
    starvation_threshold: int | None = None

    def __init__(self, *, predictor: Predictor, preset: Preset) -> None:
        self.predictor = predictor
        self.preset = preset
        self._view: EngineView | None = None

    @property
    def view(self) -> EngineView:
        if self._view is None:
            raise RuntimeError(f"policy {self.name!r} is not bound to an engine")
        return self._view

    def bind(self, view: EngineView) -> None:
        self._view = view

    # -- predictions ---------------------------------------------------------------------
    @staticmethod
    def query_for(req: Request) -> PredictionQuery:
        seg = req.segment
        return PredictionQuery(
            agent=req.program.agent,
            step=req.seg_index,
            tool=seg.tool,
            prompt_tokens=seg.prompt_tokens,
            program_id=req.program.program_id,
            tenant=req.program.tenant,
            truth=seg,
        )

    def on_turn_start(self, req: Request) -> None:
        """A turn became schedulable (arrival, or its tool returned): predict it."""
        req.prediction = self.predictor.predict(self.query_for(req))

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        """A turn and its tool call completed: let the predictor learn."""
        self.predictor.observe(self.query_for(req), outcome)

    def on_tool_call(self, req: Request, gap: float) -> None:
        """``req``'s turn ended in a tool call, predicted to last ``gap`` seconds; it pauses now,
        before the decision about its KV (:meth:`on_pause`).  The simulator reports the turn's
        end only when the tool returns; this is when it left."""

    # -- ordering ------------------------------------------------------------------------
    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        return (req.arrival_time, float(req.request_id))

    def preemption_key(self, req: Request) -> tuple[float, ...]:
        """The running request with the largest key is preempted first."""
        return req.queue_key

    # -- KV handling ---------------------------------------------------------------------
    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.DISCARD

    def adjust_paused(self, preserved: Sequence[PausedKV]) -> list[tuple[PausedKV, KVStrategy]]:
        return []

    def pin_ttl(self, paused: PausedKV) -> float | None:
        """Seconds the KV of a turn just preserved by :meth:`on_pause` may stay pinned; ``None``
        (the default): the scheduler's :class:`~lamps_agent.scheduler.core.PinLifetime`."""
        return None

    def pin_release_key(self, paused: PausedKV) -> float:
        """Under memory pressure, preserved turns with the largest key are released first:
        by default the predicted waste of keeping them, remaining tool time × context."""
        return paused.remaining(self.view.now) * paused.tokens

    def release_strategy(self, paused: PausedKV) -> KVStrategy:
        """How a pin released under memory pressure gives up its GPU blocks: discard by default
        (stock vLLM has no swap); policies that swap override it (:func:`least_waste_release`)."""
        return KVStrategy.DISCARD

    # -- admission -----------------------------------------------------------------------
    def admission_gate(self, *, shares: TenantShares | None = None) -> AdmissionGate | None:
        """This iteration's gate (``None``: admit in order).  Called only if
        ``gates_admission``; a gate must let every request through within a stated bound.
        ``shares``: each tenant's entitlement (a fraction, summing to 1) among the tenants with
        work, when the scheduler's fair share is on and more than one tenant has work; a gate
        with a budget guarantees each tenant its share of it (else the gate ignores it)."""
        return None

    def begin_iteration(self, resident: Sequence[Request]) -> None:
        """Called once per iteration before anything is scheduled (policies with holds)."""

    def hold(self, req: Request) -> bool:
        return False

    # -- notifications (for policies that keep their own counts) -------------------------
    def on_enqueue(self, req: Request) -> None:
        pass

    def on_admit(self, req: Request) -> None:
        pass

    def on_leave(self, req: Request) -> None:
        """A resident request stopped being resident (finished, paused, preempted)."""

    def on_abort(self, req: Request) -> None:
        """``req`` was aborted wherever it was (waiting, running or paused): it will not come
        back."""

    def limit_context(self, tokens: int) -> None:
        """The engine's longest context (a server's ``max_model_len``): no request's context can
        grow past it.  Policies that predict context growth cap their predictions here."""

    # -- reporting -------------------------------------------------------------------------
    def state(self) -> dict[str, float]:
        """The policy's own counts for a serving engine's statistics (none by default)."""
        return {}


def least_waste_release(policy: Policy, paused: PausedKV) -> KVStrategy:
    """Swap or discard a released pin, whichever wastes less; swap only with host room and a
    remaining tool time that covers the copy out and back in."""
    view = policy.view
    preset = policy.preset
    remaining = paused.remaining(view.now)
    round_trip = 2.0 * preset.cost.swap_time(paused.tokens * preset.kv_bytes_per_token)
    if not view.memory.can_swap_out(paused.blocks) or remaining < round_trip:
        return KVStrategy.DISCARD
    w_swap = swap_waste(paused.tokens, view.running_tokens, preset.cost, preset.kv_bytes_per_token)
    w_discard = discard_waste(paused.tokens, view.load, preset.cost, preset.token_budget)
    return KVStrategy.SWAP if w_swap < w_discard else KVStrategy.DISCARD


def predicted_turn(req: Request) -> Prediction:
    if req.prediction is None:
        raise RuntimeError(f"request {req.request_id} has no prediction for its turn")
    return req.prediction
