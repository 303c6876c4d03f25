"""vLLM's waiting queue, backed by the core scheduler's queue: the plug-in keeps no order of its own.

vLLM's ``Scheduler.schedule`` walks ``self.waiting`` with ``peek_request`` / ``pop_request`` while
it has budget, puts back what it skipped with ``prepend_requests``, and sends preempted requests
back with ``prepend_request``.  This class answers those calls from the core
:class:`~lamps_agent.scheduler.core.Scheduler`:

* the order is the core :class:`~lamps_agent.scheduler.queue.WaitingQueue`'s (policy key,
  starvation bound), over the core request that mirrors each vLLM request;
* what vLLM may take this step is :meth:`Scheduler.admissible` — the policy's admission gate
  applied (WAIT, Nested WAIT hold requests back here), walked lazily as vLLM asks for the next
  request, so vLLM's own limits (seats, token budget, a request it skips) end the walk and no
  seat count is kept here;
* a request popped and not put back was admitted (:meth:`Scheduler.admit`); one put back that was
  running was preempted (:meth:`Scheduler.preempt`, keeping its key, as in the simulator).

``len()`` counts every waiting request, held ones included, so the engine keeps stepping (and the
gate's liveness rules get their chance) while anything waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, overload

try:  # vLLM's abstract queue, so a missing method is an error at class creation ...
    from vllm.v1.core.sched.request_queue import RequestQueue
except ImportError:  # ... and, without vLLM, the plug-in's state can be built and tested alone
    RequestQueue = object  # type: ignore[misc,assignment]

from lamps_agent.request import Request as CoreRequest
from lamps_agent.request import RequestState
from lamps_agent.scheduler import Scheduler

Request = Any  # a vLLM ``vllm.v1.request.Request``, used by its attributes
CoreOf = Callable[[Request], CoreRequest | None]


def _nothing() -> None:
    return None


class LampsRequestQueue(RequestQueue):
    def __init__(
        self, *, scheduler: Scheduler, core_of: CoreOf, before_walk: Callable[[], None] = _nothing
    ) -> None:
        """``before_walk``: called as each admissible walk starts (the plug-in brings the core's
        free blocks up to date: vLLM walks its waiting queue after this step's running requests
        took their blocks, and the simulator's gate sees those taken too)."""
        self._sched = scheduler
        self._core_of = core_of
        self._before_walk = before_walk
        self._vllm: dict[int, Request] = {}  # core request id -> vLLM request
        self._unknown: deque[Request] = deque()  # requests the plug-in could not read: FCFS, last
        self._walk: Iterator[CoreRequest] | None = None  # this step's admissible walk
        self._ahead: deque[Request] = deque()  # walked, not yet popped
        self._walk_done = False
        self._taken: dict[str, tuple[CoreRequest, tuple[float, ...], int]] = {}
        self.gate_held_steps = 0  # steps where the policy's gate held back a waiting request
        self._held_counted = False

    # -- per step ----------------------------------------------------------------------------
    def new_step(self) -> None:
        """Forget the previous step's walk (the engine calls this before schedule)."""
        self._reset()
        self._held_counted = False

    def _reset(self) -> None:
        """The order may have changed (a request came or came back): walk again."""
        self._walk = None
        self._ahead.clear()
        self._walk_done = False

    def end_step(self) -> list[CoreRequest]:
        """After vLLM's schedule: the requests it took and kept are admitted; returns them."""
        admitted = []
        for core, _, _ in self._taken.values():
            self._sched.admit_taken(core)
            admitted.append(core)
        self._taken.clear()
        self._reset()
        return admitted

    def _next(self) -> Request | None:
        """The next request vLLM may take: the admissible walk's, then the unreadable ones."""
        if self._ahead:
            return self._ahead[0]
        if not self._walk_done:
            if self._walk is None:
                self._before_walk()
                self._walk = self._sched.admissible(len(self._sched.waiting))
            for core in self._walk:
                request = self._vllm.get(core.request_id)
                if request is not None:  # else vLLM holds it in a queue of its own
                    self._ahead.append(request)
                    return request
            self._walk_done = True
            if not self._held_counted and self._sched.waiting:
                self.gate_held_steps += 1  # the gate ended the walk with requests waiting
                self._held_counted = True
        return self._unknown[0] if self._unknown else None

    # -- RequestQueue ------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        core = self._core_of(request)
        if core is None:
            self._unknown.append(request)
        else:
            self._vllm[core.request_id] = request
            if core not in self._sched.waiting:
                self._sched.enqueue(core)
        self._reset()

    def pop_request(self) -> Request:
        request = self._next()
        if request is None:
            raise IndexError("pop from an empty queue")
        if self._ahead:
            self._ahead.popleft()
        self._take(request)
        return request

    def _take(self, request: Request) -> None:
        core = self._core_of(request)
        if core is None:
            self._unknown.remove(request)
            return
        entry = (core, core.queue_key, core.enqueued_iteration)
        self._sched.take(core)
        self._taken[request.request_id] = entry

    def peek_request(self) -> Request:
        request = self._next()
        if request is None:
            raise IndexError("peek from an empty queue")
        return request

    def prepend_request(self, request: Request) -> None:
        taken = self._taken.pop(request.request_id, None)
        core = self._core_of(request)
        if taken is not None:  # skipped this step: back where it stood
            self._sched.untake(*taken)
        elif core is not None and core.state is not RequestState.WAITING:
            self._sched.preempt(core)  # was running: keeps its key, as in the simulator
        elif core is None:
            self._unknown.appendleft(request)
        if core is not None:
            self._vllm[core.request_id] = request
        self._reset()

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.prepend_request(request)

    def remove_request(self, request: Request) -> None:
        self.remove_requests((request,))

    def remove_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            core = self._core_of(request)
            self._taken.pop(request.request_id, None)
            if core is None:
                if request in self._unknown:
                    self._unknown.remove(request)
                continue
            self._vllm.pop(core.request_id, None)
            if core in self._sched.waiting:
                self._sched.waiting.remove(core)
        self._reset()

    def __bool__(self) -> bool:
        return self._next() is not None

    def __len__(self) -> int:
        return len(self._sched.waiting) + len(self._unknown)

    def __iter__(self) -> Iterator[Request]:
        """Every waiting request in the core's order (held ones included), then the unreadable."""
        order = [
            self._vllm[c.request_id] for c in self._sched.waiting.ordered(self._sched.iteration)
        ]
        return iter([*order, *self._unknown])

    @overload
    def __getitem__(self, index: int) -> Request: ...
    @overload
    def __getitem__(self, index: slice) -> list[Request]: ...
    def __getitem__(self, index: int | slice) -> Request | list[Request]:
        """Indexable as vLLM's FCFS deque is, in :meth:`__iter__`'s order."""
        return list(self)[index]

    def forget(self, core: CoreRequest) -> None:
        """``core``'s vLLM request left the engine for good."""
        self._vllm.pop(core.request_id, None)
