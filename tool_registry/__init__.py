"""The tool registry: tools, their recorded calls, and the duration estimates scheduling policies
consume through the core's :class:`~lamps_agent.predictors.base.DurationSource` protocol.

>>> with ToolRegistry("sqlite:///registry.db") as reg:       # doctest: +SKIP
...     reg.register(search, duration_hint=2.0, api_type="search")
...     reg.record("search", duration=1.7)
...     reg.estimate("search").mean
...     reg.record_turn(agent="chatbot", step=0, output_tokens=57, tool="search")
"""

from tool_registry.errors import (
    RegistryClosedError,
    RegistryError,
    RegistryUnavailableError,
    SchemaTooNewError,
)
from tool_registry.registry import ToolRegistry
from tool_registry.types import CallRecord, CallStatus, ToolInfo, ToolStats, TurnRecord

__all__ = [
    "CallRecord",
    "CallStatus",
    "RegistryClosedError",
    "RegistryError",
    "RegistryUnavailableError",
    "SchemaTooNewError",
    "ToolInfo",
    "ToolRegistry",
    "ToolStats",
    "TurnRecord",
]
