"""Workloads: INFERCEPT-format traces, synthetic program types, and arrival processes."""

from lamps_agent.workloads.arrivals import Arrival, poisson_workload
from lamps_agent.workloads.infercept import BUILTIN_TRACES, Trace, load_trace
from lamps_agent.workloads.synthetic import INFERCEPT_LIKE, ProgramType, generate_programs

__all__ = [
    "BUILTIN_TRACES",
    "INFERCEPT_LIKE",
    "Arrival",
    "ProgramType",
    "Trace",
    "generate_programs",
    "load_trace",
    "poisson_workload",
]
