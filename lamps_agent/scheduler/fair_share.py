"""Fair share across tenants: no tenant is admitted past its share while another one waits.

A tenant is the client a program came from (:attr:`Program.tenant`; ``None`` is the one tenant
of a deployment without tenants).  Its *usage* is its dominant share of the engine (dominant
resource fairness, Ghodsi et al., NSDI 2011): the larger of the fraction of the GPU's KV blocks
its resident requests and its pinned KV hold and the fraction of the batch's seats (``max_num_seqs``) they take.
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
- the starvation bound holds per tenant within its share: a starved request (the waiting queue's
  bound, :class:`WaitingQueue`) of a tenant below its entitlement goes first, so such a tenant
  waits no longer than ``starvation_threshold`` iterations for its turn at the head; a starved
  request of a tenant at or above its share goes first among the requests walked after the others
  (a burst's backlog starves by the hundred: letting it jump the queue would hand the burst the
  engine).

Preemption and pin release read the same verdict: the running order puts the requests of tenants
over their share last, so they are preempted first, and their pinned KV is released first
(:meth:`FairShare.victim_last`).  Pinned KV counts toward its tenant's blocks.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.scheduler.queue import WaitingQueue

Tenant = str | None


def tenant_of(req: Request) -> Tenant:
    return req.program.tenant


@dataclass(slots=True)
class Usage:
    """One tenant's resident requests: KV blocks held and batch seats taken."""

    blocks: int = 0
    seats: int = 0


Standing = tuple[dict[Tenant, "Usage"], dict[Tenant, float]]
"""Each tenant's usage and its entitlement (:meth:`FairShare.over`)."""


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
    ) -> Standing:
        """Each tenant's usage and its entitlement among the tenants with work."""
        use = self.usage(running, pinned)
        tenants = set(use) | {t for t, n in waiting.items() if n > 0}
        return use, self.entitlements(tenants)

    def order(
        self,
        queue: WaitingQueue,
        iteration: int,
        *,
        running: Iterable[Request],
        pinned: Iterable[PausedKV] = (),
        blocks_of: Callable[[Request], int],
        closed: AbstractSet[Tenant] = frozenset(),
        standing: Standing | None = None,
    ) -> Iterator[Request]:
        """``queue``'s order with the requests of tenants at or above their entitlement moved
        after everyone else's; starved requests first within each part.  Each request
        yielded counts toward its tenant's usage (``blocks_of(req)`` more blocks, one seat) as if
        admitted.  With one tenant waiting, the queue's own order.

        The tenants' walks are merged by key, so a step costs what it admits, not the length of
        a bursting tenant's backlog.  ``closed``: tenants the consumer holds for the rest of the
        walk (a gate's per-tenant budget, filled as the walk goes); none of theirs follows.
        ``standing``: :meth:`over` of the same state, where the caller computed it already (its
        usage is counted up as the walk yields)."""
        waiting = queue.tenants
        if len(waiting) <= 1:
            for req in queue.ordered(iteration):  # a partition of one tenant's requests
                if closed and tenant_of(req) in closed:
                    return
                yield req
            return
        seen: set[int] = set()
        use, entitled = standing if standing is not None else self.over(running, waiting, pinned)
        # Starved requests first, oldest first, unless their tenant is at its share: then first
        # among its own, behind everyone within theirs (a burst's backlog starves by the
        # hundred; letting it jump the queue would hand the burst the engine).
        starved_over: list[Request] = []
        for req in queue.starved(iteration, seen):
            tenant = tenant_of(req)
            if tenant in closed:
                continue
            u = use.setdefault(tenant, Usage())
            if self.share(u) >= entitled[tenant]:
                starved_over.append(req)
                continue
            u.blocks += blocks_of(req)
            u.seats += 1
            yield req
        walks = {t: queue.of_tenant(t) for t in waiting}
        heads: list[tuple[tuple[float, ...], int, Tenant, Request]] = []
        over: list[Tenant] = []
        for tenant, walk in walks.items():
            if self.share(use.setdefault(tenant, Usage())) >= entitled[tenant]:
                over.append(tenant)
            else:
                _push_next(heads, tenant, walk, seen)
        while heads:
            key, seq, tenant, req = heads[0]
            if tenant in closed:
                heapq.heappop(heads)  # held: the rest of its walk is not asked for
                continue
            u = use[tenant]
            if self.share(u) >= entitled[tenant]:
                # reached its share during this walk: the rest of it waits behind the others
                heapq.heappop(heads)
                over.append(tenant)
                walks[tenant] = itertools.chain([(key, seq, req)], walks[tenant])
                continue
            heapq.heappop(heads)
            u.blocks += blocks_of(req)
            u.seats += 1
            yield req
            _push_next(heads, tenant, walks[tenant], seen)
        for req in starved_over:
            if tenant_of(req) not in closed:
                yield req
        for tenant in over:
            if tenant not in closed:
                _push_next(heads, tenant, walks[tenant], seen)
        while heads:
            _, _, tenant, req = heapq.heappop(heads)
            if tenant in closed:
                continue
            yield req
            _push_next(heads, tenant, walks[tenant], seen)

    def victim_last(
        self,
        running: Sequence[Request],
        waiting: Counter[Tenant],
        pinned: Iterable[PausedKV] = (),
    ) -> Callable[[Request], bool] | None:
        """Whether a resident request's tenant holds more than its entitlement among the tenants
        with work: such requests go to the end of the running order (preempted first).  None
        when one tenant has all the work (the policy's order stands)."""
        if len({tenant_of(r) for r in running} | {t for t, n in waiting.items() if n > 0}) <= 1:
            return None
        use, entitled = self.over(running, waiting, pinned)
        over = {t for t, u in use.items() if self.share(u) > entitled[t]}
        return lambda req: tenant_of(req) in over


def _push_next(
    heads: list[tuple[tuple[float, ...], int, Tenant, Request]],
    tenant: Tenant,
    walk: Iterator[tuple[tuple[float, ...], int, Request]],
    seen: set[int],
) -> None:
    """The next entry of ``tenant``'s walk not yet given (starved ones were), onto ``heads``."""
    for key, seq, req in walk:
        if seq not in seen:
            heapq.heappush(heads, (key, seq, tenant, req))
            return
