"""The discrete-event engine simulator, the embedded default engine."""

from lamps_agent.sim.engine import RunLabels, Simulator
from lamps_agent.sim.scheduler import BatchScheduler, SchedulerOutput

__all__ = ["BatchScheduler", "RunLabels", "SchedulerOutput", "Simulator"]
