"""The discrete-event engine simulator, the embedded default engine (it drives the core scheduler)."""

from lamps_agent.metrics import RunLabels
from lamps_agent.sim.engine import Simulator, Step, StepStatus

__all__ = ["RunLabels", "Simulator", "Step", "StepStatus"]
