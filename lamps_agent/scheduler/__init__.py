"""The scheduler in the core: queues, paused turns, KV accounting and preemption, one policy.

Both engines drive it: the simulator (:mod:`lamps_agent.sim`) and vLLM (:mod:`adapters.vllm`).
"""

from lamps_agent.scheduler.core import (
    PinLifetime,
    Scheduler,
    SchedulerCounters,
    SchedulerOutput,
    TurnEnd,
)
from lamps_agent.scheduler.paused import UNKNOWN_GAP_S, PausedKV, PausedTable
from lamps_agent.scheduler.queue import WaitingQueue

__all__ = [
    "UNKNOWN_GAP_S",
    "PausedKV",
    "PausedTable",
    "PinLifetime",
    "Scheduler",
    "SchedulerCounters",
    "SchedulerOutput",
    "TurnEnd",
    "WaitingQueue",
]
