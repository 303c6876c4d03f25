"""vLLM's waiting queue, ordered by a lamps-agent policy key with a starvation bound.

Keys are computed once per request by the core policy (LAMPS: the predicted memory-over-time
area; INFERCEPT: the session's original arrival).  A request that has waited
``starvation_threshold`` scheduler steps goes ahead of every key, oldest first; preempted requests
(``prepend_request``) go ahead of everything, as in vLLM.

Cheap per step: entries stay sorted by key as they arrive (``bisect``), and since steps only grow,
the starved requests are always a prefix of the entry order — so a step costs a scan that stops at
the first request that is not starved, and the order is rebuilt only when that prefix changes.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request

KeyFn = Callable[[Request], tuple[float, ...]]
_Entry = tuple[tuple[float, ...], int, Request]


class LampsRequestQueue(RequestQueue):
    def __init__(
        self, *, key: KeyFn, step: Callable[[], int], starvation_threshold: int | None
    ) -> None:
        self._key = key
        self._step = step
        self._threshold = starvation_threshold
        self._front: deque[Request] = deque()
        self._items: dict[str, Request] = {}  # insertion order = entry order
        self._entered: dict[str, int] = {}
        self._sorted: list[_Entry] = []  # by (key, arrival sequence)
        self._seq = 0
        self._order: list[Request] | None = None
        self._num_starved = -1

    # -- ordering ----------------------------------------------------------------------------
    def _count_starved(self) -> int:
        if self._threshold is None:
            return 0
        limit = self._step() - self._threshold
        n = 0
        for rid in self._items:
            if self._entered[rid] > limit:
                break
            n += 1
        return n

    def _ordered(self) -> list[Request]:
        starved = self._count_starved()
        if self._order is not None and starved == self._num_starved:
            return self._order
        head = list(self._items.values())[:starved]  # oldest first
        first = {id(r) for r in head}
        rest = [r for _, _, r in self._sorted if id(r) not in first]
        self._order = [*self._front, *head, *rest]
        self._num_starved = starved
        return self._order

    def is_starved(self, request: Request) -> bool:
        entered = self._entered.get(request.request_id)
        return (
            entered is not None
            and self._threshold is not None
            and self._step() - entered >= self._threshold
        )

    def _changed(self) -> None:
        self._order = None

    def _drop(self, request: Request) -> bool:
        """Forget a keyed entry; False if it was not one (a prepended request)."""
        if self._items.pop(request.request_id, None) is None:
            return False
        self._entered.pop(request.request_id, None)
        for i, entry in enumerate(self._sorted):
            if entry[2] is request:
                del self._sorted[i]
                break
        return True

    # -- RequestQueue ------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self._items[request.request_id] = request
        self._entered.setdefault(request.request_id, self._step())
        self._seq += 1
        bisect.insort(
            self._sorted, (self._key(request), self._seq, request), key=lambda e: (e[0], e[1])
        )
        self._changed()

    def pop_request(self) -> Request:
        order = self._ordered()
        if not order:
            raise IndexError("pop from an empty queue")
        request = order[0]
        self.remove_request(request)
        return request

    def peek_request(self) -> Request:
        order = self._ordered()
        if not order:
            raise IndexError("peek from an empty queue")
        return order[0]

    def prepend_request(self, request: Request) -> None:
        self._front.appendleft(request)
        if self._order is not None:
            self._order.insert(0, request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.prepend_request(request)

    def remove_request(self, request: Request) -> None:
        starved = self._threshold is not None and self.is_starved(request)
        if not self._drop(request):
            self._front.remove(request)
        elif starved:
            self._num_starved -= 1
        if self._order is not None:
            # Admission removes the head: keep the cached order instead of rebuilding it.
            if self._order and self._order[0] is request:
                self._order.pop(0)
            else:
                self._order.remove(request)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = set(requests)
        for request in gone:
            self._drop(request)
        self._front = deque(r for r in self._front if r not in gone)
        self._changed()

    def __bool__(self) -> bool:
        return bool(self._items) or bool(self._front)

    def __len__(self) -> int:
        return len(self._items) + len(self._front)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._ordered()))
