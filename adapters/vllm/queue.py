"""vLLM's waiting queue, ordered by a lamps-agent policy key with a starvation bound.

Keys are computed once per request by the core policy (LAMPS: the predicted memory-over-time
area; INFERCEPT: the session's original arrival).  A request that has waited
``starvation_threshold`` scheduler steps goes ahead of every key, oldest first; preempted requests
(``prepend_request``) go ahead of everything, as in vLLM.  The order is rebuilt only when the
queue changed or the step moved on, so iterating costs one sort per step at most.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request

KeyFn = Callable[[Request], tuple[float, ...]]


class LampsRequestQueue(RequestQueue):
    def __init__(
        self, *, key: KeyFn, step: Callable[[], int], starvation_threshold: int | None
    ) -> None:
        self._key = key
        self._step = step
        self._threshold = starvation_threshold
        self._front: deque[Request] = deque()
        self._items: dict[str, Request] = {}
        self._entered: dict[str, int] = {}
        self._order: list[Request] | None = None
        self._order_step = -1

    # -- ordering ----------------------------------------------------------------------------
    def _ordered(self) -> list[Request]:
        step = self._step()
        if self._order is not None and self._order_step == step:
            return self._order
        items = list(self._items.values())
        if self._threshold is None:
            starved: list[Request] = []
            rest = items
        else:
            starved = [r for r in items if step - self._entered[r.request_id] >= self._threshold]
            starved.sort(key=lambda r: (self._entered[r.request_id], r.arrival_time))
            rest = [r for r in items if step - self._entered[r.request_id] < self._threshold]
        rest.sort(key=self._key)
        self._order = [*self._front, *starved, *rest]
        self._order_step = step
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

    # -- RequestQueue ------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self._items[request.request_id] = request
        self._entered.setdefault(request.request_id, self._step())
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
        if self._items.pop(request.request_id, None) is not None:
            self._entered.pop(request.request_id, None)
        else:
            self._front.remove(request)
        if self._order is not None:
            # Admission removes the head: keep the cached order instead of sorting again.
            if self._order and self._order[0] is request:
                self._order.pop(0)
            else:
                self._order.remove(request)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        gone = set(requests)
        for request in gone:
            if self._items.pop(request.request_id, None) is not None:
                self._entered.pop(request.request_id, None)
        self._front = deque(r for r in self._front if r not in gone)
        self._changed()

    def __bool__(self) -> bool:
        return bool(self._items) or bool(self._front)

    def __len__(self) -> int:
        return len(self._items) + len(self._front)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._ordered()))
