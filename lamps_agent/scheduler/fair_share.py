"""Fair share across tenants: no tenant is admitted past its share while another one waits.

A tenant is the client a program came from (:attr:`Program.tenant`; ``None`` is the one tenant
of a deployment without tenants).  Its *usage* is its dominant share of the engine (dominant
resource fairness, Ghodsi et al., NSDI 2011): the larger of the fraction of the GPU's KV blocks
its resident requests hold and the fraction of the batch's seats (``max_num_seqs``) they take.
Its *entitlement* is its weight over the weights of the tenants with work (resident or waiting),
equal weights by default.

The admission walk (:meth:`Scheduler.admissible`) becomes a stable partition of the policy's
order: requests of tenants below their entitlement first, in the policy's order; then the requests
of tenants at or above it, in the policy's order.  Admitting a request counts toward its tenant
during the walk, so a tenant that reaches its entitlement mid-walk waits behind the others from
there on.  Hence:

- one tenant (or all of one tenant's work): the policy's order, unchanged;
- work-conserving: a tenant over its share is still admitted when nobody else waits for room;
- a bursting tenant takes no more than its share while the others have work, and a tenant whose
  requests wait is never held behind one over its share;
- the starvation bound is per request and so per tenant: a starved request (the waiting queue's
  bound, :class:`WaitingQueue`) goes first whatever its tenant's share, so no tenant waits longer
  than ``starvation_threshold`` iterations for its turn at the head.

Preemption and pin release read the same verdict: the running order puts the requests of tenants
over their share last, so they are preempted first, and their pinned KV is released first
(:meth:`FairShare.victim_last`).  Pinned KV counts toward its tenant's blocks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV

Tenant = str | None


def tenant_of(req: Request) -> Tenant:
    return req.program.tenant


@dataclass(slots=True)
class Usage:
    """One tenant's resident requests: KV blocks held and batch seats taken."""

    blocks: int = 0
    seats: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FairShare:
    """The per-tenant share (module docstring).  ``weights``: a tenant's weight (default 1 for
    every tenant not named); ``num_blocks``, ``num_seats``: the engine's KV blocks and seats."""

    num_blocks: int
    num_seats: int
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.num_seats < 1:
            raise ValueError("fair share needs at least one KV block and one seat")
        for tenant, w in self.weights.items():
            if not tenant:
                raise ValueError("tenant weights: a tenant name must not be empty")
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"tenant weights: {tenant!r} must weigh > 0, got {w}")

    def weight(self, tenant: Tenant) -> float:
        return self.weights.get(tenant, 1.0) if tenant is not None else 1.0

    def usage(
        self, running: Iterable[Request], pinned: Iterable[PausedKV] = ()
    ) -> dict[Tenant, Usage]:
        """Blocks and seats of the resident requests, and the GPU blocks that paused turns'
        pinned KV holds (a tenant's idle sessions take memory from the others too)."""
        use: dict[Tenant, Usage] = {}
        for req in running:
            u = use.setdefault(tenant_of(req), Usage())
            u.blocks += req.gpu_blocks
            u.seats += 1
        for paused in pinned:
            if paused.request is not None and paused.strategy is KVStrategy.PRESERVE:
                use.setdefault(tenant_of(paused.request), Usage()).blocks += paused.blocks
        return use

    def share(self, u: Usage) -> float:
        """The dominant share of one tenant's usage."""
        return max(u.blocks / self.num_blocks, u.seats / self.num_seats)

    def entitlements(self, tenants: Iterable[Tenant]) -> dict[Tenant, float]:
        active = set(tenants)
        total = sum(self.weight(t) for t in active)
        return {t: self.weight(t) / total for t in active}

    def over(
        self,
        running: Iterable[Request],
        waiting: Counter[Tenant],
        pinned: Iterable[PausedKV] = (),
    ) -> tuple[dict[Tenant, Usage], dict[Tenant, float]]:
        """Each tenant's usage and its entitlement among the tenants with work."""
        use = self.usage(running, pinned)
        tenants = set(use) | {t for t, n in waiting.items() if n > 0}
        return use, self.entitlements(tenants)

    def order(
        self,
        walk: Iterable[Request],
        *,
        running: Iterable[Request],
        waiting: Counter[Tenant],
        pinned: Iterable[PausedKV] = (),
        starved: Callable[[Request], bool],
        blocks_of: Callable[[Request], int],
    ) -> Iterator[Request]:
        """``walk`` (the policy's order) with the requests of tenants at or above their
        entitlement moved after everyone else's; a starved request keeps its place.  Each request
        yielded counts toward its tenant's usage (``blocks_of(req)`` more blocks, one seat) as if
        admitted.  With one tenant, ``walk`` itself."""
        if sum(1 for n in waiting.values() if n > 0) <= 1:
            yield from walk  # a partition of one tenant's requests is their order
            return
        use, entitled = self.over(running, waiting, pinned)
        deferred: list[Request] = []
        for req in walk:
            tenant = tenant_of(req)
            u = use.setdefault(tenant, Usage())
            if not starved(req) and self.share(u) >= entitled[tenant]:
                deferred.append(req)
                continue
            u.blocks += blocks_of(req)
            u.seats += 1
            yield req
        yield from deferred

    def victim_last(
        self,
        running: Sequence[Request],
        waiting: Counter[Tenant],
        pinned: Iterable[PausedKV] = (),
    ) -> Callable[[Request], bool] | None:
        """Whether a resident request's tenant holds more than its entitlement among the tenants
        with work: such requests go to the end of the running order (preempted first).  None
        when one tenant has all the work (the policy's order stands)."""
        tenants = {tenant_of(r) for r in running}
        tenants.update(t for t, n in waiting.items() if n > 0)
        if len(tenants) <= 1:
            return None
        use = self.usage(running, pinned)
        tenants.update(use)
        entitled = self.entitlements(tenants)
        over = {t for t, u in use.items() if self.share(u) > entitled[t]}
        return lambda req: tenant_of(req) in over
