"""Value objects of the tool registry: tools, calls, model turns, statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple


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
    """One recorded tool call, as :meth:`ToolRegistry.iter_calls` returns it.

    ``id`` (UUIDv7-shaped, 32 hex digits, see :mod:`tool_registry.ids`) is given by the writer before
    the first write attempt, so a retried batch carries the same primary keys and the database can
    tell a duplicate from a new row.
    """

    tool: str
    duration: float
    started_at: float
    status: CallStatus = CallStatus.OK
    session_id: str | None = None
    error_type: str | None = None
    input_size: int | None = None
    output_size: int | None = None
    id: str | None = field(default=None)


@dataclass(slots=True, kw_only=True)
class TurnRecord:
    """One recorded model turn, as :meth:`ToolRegistry.iter_turns` returns it.

    ``tool`` is the tool the reply called (``None``: a final answer); ``prompt_text`` is ``None``
    unless the user opted in to storing prompts (at most the last ``MAX_PROMPT_TEXT`` characters).
    """

    agent: str
    step: int
    output_tokens: int
    created_at: float
    tool: str | None = None
    prompt_tokens: int | None = None
    session_id: str | None = None
    prompt_text: str | None = None
    id: str | None = field(default=None)


# The hot path carries calls as plain tuples, not CallRecord objects: tuples of strings and numbers
# drop out of the garbage collector's tracking, and with 100,000 calls buffered that halves the
# writer's cost per call.  A PendingCall is what record() buffers; the writer prefixes the id.
PendingCall = tuple[str, str | None, float, float, str, str | None, int | None, int | None]
#                  tool session_id started duration status error_type input_size output_size
CallRow = tuple[str, str, str | None, float, float, str, str | None, int | None, int | None]
#              id   then the PendingCall fields: the column order of the calls table
ROW_ID: Final = 0
ROW_TOOL: Final = 1
ROW_STARTED_AT: Final = 3
ROW_DURATION: Final = 4
ROW_STATUS: Final = 5


class PendingTurn(NamedTuple):
    """What ``record_turn()`` buffers.  A named tuple, not a plain one: the writer tells a turn from
    a call by ``type(item) is tuple``, so ``record()`` buffers calls exactly as before."""

    session_id: str | None
    agent: str
    step: int
    tool: str | None
    prompt_tokens: int | None
    output_tokens: int
    prompt_text: str | None
    created_at: float


class TurnRow(NamedTuple):
    """A turn with its id: the column order of the turns table."""

    id: str
    session_id: str | None
    agent: str
    step: int
    tool: str | None
    prompt_tokens: int | None
    output_tokens: int
    prompt_text: str | None
    created_at: float


Row = CallRow | TurnRow  # what the writer sends and the spill file keeps


def with_id(row_id: str, item: PendingCall | PendingTurn) -> Row:
    """The stored row of a buffered call or turn."""
    if type(item) is tuple:
        return (row_id, *item)
    return TurnRow(row_id, *item)


def row_to_record(row: CallRow) -> CallRecord:
    return CallRecord(
        id=row[0],
        tool=row[1],
        session_id=row[2],
        started_at=row[3],
        duration=row[4],
        status=CallStatus(row[5]),
        error_type=row[6],
        input_size=row[7],
        output_size=row[8],
    )


def record_to_row(record: CallRecord) -> CallRow:
    if record.id is None:
        raise ValueError("a stored call needs an id")
    return (
        record.id,
        record.tool,
        record.session_id,
        record.started_at,
        record.duration,
        record.status.value,
        record.error_type,
        record.input_size,
        record.output_size,
    )


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


# The columns of a call record, in storage order: the hot-path SQL and the CSV/JSON export use it.
CALL_FIELDS: Final = (
    "id",
    "tool",
    "session_id",
    "started_at",
    "duration",
    "status",
    "error_type",
    "input_size",
    "output_size",
)

# The columns of a turn record, in storage order.
TURN_FIELDS: Final = TurnRow._fields
