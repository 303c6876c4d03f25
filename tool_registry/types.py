"""Value objects of the tool registry: tools, calls, statistics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class CallStatus(StrEnum):
    """How a tool call ended."""

    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolInfo:
    """A registered tool.  ``registered_at`` is in epoch seconds; ``duration_hint`` in seconds."""

    name: str
    description: str | None = None
    api_type: str | None = None
    duration_hint: float | None = None
    registered_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class CallRecord:
    """One recorded tool call (a hot record: built on the caller's thread for every call).

    ``id`` is filled in by the writer before the first write attempt, so a retried batch carries the
    same primary keys and the database can tell a duplicate from a new row.
    """

    tool: str
    duration: float
    started_at: float
    status: CallStatus = CallStatus.OK
    session_id: str | None = None
    error_type: str | None = None
    input_size: int | None = None
    output_size: int | None = None
    id: uuid.UUID | None = field(default=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStats:
    """Observed statistics of one tool (no prior blended in); durations in seconds."""

    tool: str
    count: int
    error_count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p99: float
    ewma: float
    last_at: float | None

    @property
    def error_rate(self) -> float:
        return self.error_count / self.count if self.count else 0.0
