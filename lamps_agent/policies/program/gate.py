"""The ``program`` policy's admission gate: a fluid-model threshold on whole programs (after WAIT).

Later turns of admitted programs pass when their whole context fits in the free KV (else they
wait for memory, not for anyone's rank); new programs while the fluid footprint stays under
budget and no later turn is waiting for memory.  The queue puts every later turn ahead of every
new program, so the first refused new program ends the walk (``exhausted``).  The gate sees the
policy through :class:`GatedPolicy` and is made afresh for each look.

With tenants (``shares``, from the scheduler's fair share): each tenant is guaranteed its share of
the budget — a new program of a tenant whose own committed footprint stays within its share
passes whatever the others hold, so a bursting tenant's resident programs cannot shut the gate on
the rest.  Past its share a tenant's program passes only by the shared rule above.  A refusal then
holds that tenant alone (``closes_tenant``): the walk goes on to the other tenants' requests.

A new program held (over the threshold, or behind a later turn waiting for memory) is held at
most its policy's ``patience_for`` iterations (rent or buy: :meth:`ProgramPolicy.patience_for`),
then passes.  The new programs behind it wait for it (the refusal ends the walk): letting each
pass at its own patience instead made the simulated multi-API trace unstable at a rate the gate
holds (docs/benchmarks.md, "Where a new program's first token waits").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from lamps_agent.policies.base import EngineView, TenantShares
from lamps_agent.policies.program.inflight import ProgramsInFlight
from lamps_agent.policies.program.keys import program_key
from lamps_agent.request import Request


class _Held(enum.Enum):
    TURN_WAITS = "a later turn waits for memory"
    THRESHOLD = "over the fluid threshold"


class GatedPolicy(Protocol):
    """What the gate reads of its policy (and the one count it keeps there)."""

    counters_held: int  # new programs refused (one per refusal)
    counters_waited_out: int  # held new programs let through by their patience

    @property
    def view(self) -> EngineView: ...

    @property
    def in_flight(self) -> ProgramsInFlight: ...

    def patience_for(self, req: Request) -> int: ...

    @property
    def budget_tokens(self) -> float: ...

    @property
    def open_below_tokens(self) -> float: ...

    def footprint_term(self, req: Request) -> float: ...

    def predicted_peak(self, req: Request) -> float: ...


class ProgramGate:
    """One look's gate.  ``resident``: the committed footprint of the programs whose KV is on the
    GPU at this look (:meth:`ProgramsInFlight.resident`)."""

    def __init__(
        self,
        policy: GatedPolicy,
        *,
        resident: float,
        shares: TenantShares | None = None,
        resident_by_tenant: Mapping[str | None, float] | None = None,
    ) -> None:
        self._policy = policy
        self._resident = resident
        self._shares = shares
        self._committed_by_tenant = dict(resident_by_tenant or {})
        self._closes_tenant = False
        self._pending = 0.0
        self._pending_peaks = 0.0
        self._closed = False
        self._turn_waits = False
        self._given = 0  # requests this walk admitted
        # Idle: nothing running, or no program in flight but turns paused in a tool whose
        # return this engine cannot see.  An idle engine admits the head whatever its size:
        # requests queued before the rules engaged carry the later turns' class, so a new
        # program among them could otherwise hold the walk with nothing running to free memory.
        self._idle = policy.view.num_running == 0 or all(
            f.in_tool for f in policy.in_flight.values()
        )
        memory = policy.view.memory
        self._free_blocks = memory.free_gpu_blocks - max(1, memory.num_gpu_blocks // 100)
        self._used = memory.used_gpu_blocks * memory.block_size

    def allow(self, req: Request) -> bool:
        policy = self._policy
        self._closes_tenant = False
        if program_key(req) in policy.in_flight:
            return self._allow_turn(req)
        term = policy.footprint_term(req)
        peak = policy.predicted_peak(req)
        tenant = req.program.tenant
        held = self._held(term, peak, within_share=self._within_share(tenant, term))
        if held is not None:
            if policy.view.iteration - req.enqueued_iteration < policy.patience_for(req):
                return self._refuse(counted=held is _Held.THRESHOLD)
            policy.counters_waited_out += 1  # it waited out what holding it could save
        self._given += 1
        self._pending += term
        self._pending_peaks += peak
        self._free_blocks -= policy.view.memory.blocks_for(req.remaining_prefill + 1)
        if self._shares is not None:
            self._committed_by_tenant[tenant] = self._committed_by_tenant.get(tenant, 0.0) + term
        return True

    def _held(self, term: float, peak: float, *, within_share: bool) -> _Held | None:
        """Why a new program would be held now, if it would."""
        if within_share:
            return None
        if self._turn_waits:
            return _Held.TURN_WAITS  # later turns wait for memory: they go first
        if self._idle and not self._given:
            return None  # an idle engine admits the head, whatever its size
        policy = self._policy
        if self._resident + self._pending + term <= policy.budget_tokens:
            return None
        if self._used + self._pending_peaks + peak <= policy.open_below_tokens:
            return None
        return _Held.THRESHOLD

    def _refuse(self, *, counted: bool) -> bool:
        """A new program refused: without shares the walk ends; with them, its tenant's does."""
        if self._shares is None:
            self._closed = True
        else:
            self._closes_tenant = True
        if counted:
            self._policy.counters_held += 1
        return False

    def _within_share(self, tenant: str | None, term: float) -> bool:
        """Whether ``tenant``'s committed footprint with ``term`` stays within its share of the
        budget (never, without shares)."""
        if self._shares is None:
            return False
        share = self._shares.get(tenant, 0.0) * self._policy.budget_tokens
        return self._committed_by_tenant.get(tenant, 0.0) + term <= share

    def _allow_turn(self, req: Request) -> bool:
        """A chunked prefill reserves one chunk at a time: a long context recomputed into memory
        that cannot hold it preempts others chunk by chunk (and they it).  Start it only when
        all of it fits, or when nothing else runs."""
        need = self._policy.view.memory.blocks_for(req.remaining_prefill + 1)
        if need <= self._free_blocks or self._policy.view.num_running == 0:
            self._free_blocks -= need
            self._given += 1
            return True
        self._turn_waits = True
        return False

    @property
    def exhausted(self) -> bool:
        return self._closed

    @property
    def closes_tenant(self) -> bool:
        return self._closes_tenant
