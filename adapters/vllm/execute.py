"""How the plug-in executes the core's decisions inside vLLM's own scheduling pass, kept free of
vLLM imports so that a fake engine (tests/fake_engine.py) runs the very same code.

vLLM's ``Scheduler.schedule`` walks ``running`` from the front, allocates each request's blocks
with ``kv_cache_manager.allocate_slots`` and, when an allocation fails, preempts
``running.pop()``.  Two translations make that loop carry out the core's decisions:

* :func:`order_running` puts ``running`` in the core's running order
  (:meth:`~lamps_agent.scheduler.core.Scheduler.running_order`), so the request advanced first is
  the policy's first and the victim popped is the policy's (the largest preemption key);
* :func:`retry_allocation` wraps ``allocate_slots`` so that a failed allocation first releases
  the pin the core gives up (:meth:`~lamps_agent.scheduler.core.Scheduler.pin_to_release`) and
  tries again — the moment the simulator releases pins too — and vLLM preempts only when no pin
  is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from lamps_agent.request import Request as CoreRequest
from lamps_agent.scheduler import Scheduler

T = TypeVar("T")


def order_running(
    running: list[T], core: Scheduler, core_of: Callable[[T], CoreRequest | None]
) -> None:
    """Sort the engine's ``running`` list in place into the core's running order; requests the
    core does not know keep their place at the front, in the engine's order."""
    if len(running) > 1:
        rank = {id(req): i for i, req in enumerate(core.running_order())}
        running.sort(key=lambda r: rank.get(id(core_of(r)), -1))


def retry_allocation(manager: Any, release: Callable[[Any], bool]) -> None:
    """Wrap ``manager.allocate_slots(request, ...)``: while it fails and ``release(request)``
    frees a pin, try again.  A failed ``allocate_slots`` changes nothing (vLLM checks the free
    count before it touches a block), so the retry is safe."""
    original = manager.allocate_slots

    def allocate_slots(request: Any, *args: Any, **kwargs: Any) -> Any:
        blocks = original(request, *args, **kwargs)
        while blocks is None and release(request):
            blocks = original(request, *args, **kwargs)
        return blocks

    manager.allocate_slots = allocate_slots
