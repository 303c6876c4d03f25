"""The waiting queue: ordered by a policy's key, with an optional starvation bound.

Each entry keeps the key it was given when it entered (FCFS: arrival time; LAMPS: predicted
memory-over-time area) and the iteration it entered at.  A request that has waited
``starvation_threshold`` iterations is *starved*: starved requests go first, oldest first, ahead of
every key.  Keys are fixed at entry, so the order costs a heap operation, not a sort per iteration.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from collections.abc import Iterator

from lamps_agent.request import Request


class WaitingQueue:
    def __init__(self, *, starvation_threshold: int | None = None) -> None:
        if starvation_threshold is not None and starvation_threshold < 1:
            raise ValueError("starvation_threshold must be >= 1 (or None for no bound)")
        self.starvation_threshold = starvation_threshold
        self._heap: list[tuple[tuple[float, ...], int, Request]] = []
        self._fifo: deque[tuple[int, int, Request]] = deque()
        self._member: dict[int, int] = {}  # request id -> entry sequence number
        self._seq = itertools.count()
        self.tenants: Counter[str | None] = Counter()  # waiting requests per tenant
        # the same entries per tenant, for a walk that takes tenants in an order of its own
        self._by_tenant: dict[str | None, list[tuple[tuple[float, ...], int, Request]]] = {}

    def __len__(self) -> int:
        return len(self._member)

    def __contains__(self, req: Request) -> bool:
        return req.request_id in self._member

    def push(self, req: Request, key: tuple[float, ...], iteration: int) -> None:
        if req.request_id in self._member:
            raise ValueError(f"request {req.request_id} is already waiting")
        seq = next(self._seq)
        req.queue_key = key
        req.enqueued_iteration = iteration
        self._member[req.request_id] = seq
        self.tenants[req.program.tenant] += 1
        heapq.heappush(self._heap, (key, seq, req))
        heapq.heappush(self._by_tenant.setdefault(req.program.tenant, []), (key, seq, req))
        if self.starvation_threshold is not None:
            self._fifo.append((iteration, seq, req))

    def remove(self, req: Request) -> None:
        del self._member[req.request_id]  # entries in the heap / fifo die lazily
        tenant = req.program.tenant
        self.tenants[tenant] -= 1
        if not self.tenants[tenant]:
            del self.tenants[tenant]
        if len(self._heap) > 2 * len(self._member) + 64:
            self.compact()  # dead entries inside the heap would lengthen every walk

    def _live(self, seq: int, req: Request) -> bool:
        return self._member.get(req.request_id) == seq

    def is_starved(self, req: Request, iteration: int) -> bool:
        t = self.starvation_threshold
        return t is not None and iteration - req.enqueued_iteration >= t

    def ordered(self, iteration: int) -> Iterator[Request]:
        """Waiting requests in service order.  The caller may :meth:`remove` the request it was
        just given; it must not push while iterating."""
        seen: set[int] = set()
        yield from self.starved(iteration, seen)
        for _, seq, req in self._walk(self._heap):
            if seq not in seen:
                yield req

    def starved(self, iteration: int, seen: set[int]) -> Iterator[Request]:
        """The starved requests, oldest first; each one's entry number goes into ``seen``."""
        if self.starvation_threshold is None:
            return
        while self._fifo and not self._live(self._fifo[0][1], self._fifo[0][2]):
            self._fifo.popleft()
        for entered, seq, req in list(self._fifo):
            if iteration - entered < self.starvation_threshold:
                break
            if self._live(seq, req):
                seen.add(seq)
                yield req

    def of_tenant(self, tenant: str | None) -> Iterator[tuple[tuple[float, ...], int, Request]]:
        """One tenant's waiting entries (key, entry number, request) in key order: merged by
        (key, entry number) the tenants' walks give the order of :meth:`ordered`."""
        return self._walk(self._by_tenant.get(tenant, []))

    def _walk(
        self, heap: list[tuple[tuple[float, ...], int, Request]]
    ) -> Iterator[tuple[tuple[float, ...], int, Request]]:
        # Walk the heap in key order without disturbing it: a second heap over indices.
        while heap and not self._live(heap[0][1], heap[0][2]):
            heapq.heappop(heap)
        frontier = [(heap[0][0], heap[0][1], 0)] if heap else []
        while frontier:
            _, seq, index = heapq.heappop(frontier)
            entry = heap[index]
            if self._live(seq, entry[2]):
                yield entry
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child][0], heap[child][1], child))

    def compact(self) -> None:
        """Drop dead entries: amortized O(1) per removal, since it runs when half are dead.
        Safe during :meth:`ordered`: it binds new containers, and a walk keeps the old ones."""
        self._heap = [e for e in self._heap if self._live(e[1], e[2])]
        heapq.heapify(self._heap)
        by_tenant: dict[str | None, list[tuple[tuple[float, ...], int, Request]]] = {}
        for e in self._heap:
            by_tenant.setdefault(e[2].program.tenant, []).append(e)
        for entries in by_tenant.values():
            heapq.heapify(entries)
        self._by_tenant = by_tenant
        self._fifo = deque(e for e in self._fifo if self._live(e[1], e[2]))
