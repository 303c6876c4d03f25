"""The registry's tables as typed SQLAlchemy declarative models.

Times are epoch seconds (``DOUBLE``) so the hot insert path stays cheap and identical on SQLite and
PostgreSQL.  ``tool_stats`` and ``tool_histogram`` hold the incremental aggregates: they are updated
in the same transaction as each batch of ``calls``, so statistics never rescan the calls.  ``turns``
holds model turns for training the output-length predictor.
"""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Double, Enum, ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tool_registry.types import CallStatus


class Base(DeclarativeBase):
    pass


class Tool(Base):
    __tablename__ = "tools"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    api_type: Mapped[str | None] = mapped_column(String(255))
    duration_hint: Mapped[float | None] = mapped_column(Double)
    registered_at: Mapped[float] = mapped_column(Double)


class Call(Base):
    """One tool call.  Only the primary key is indexed: statistics come from the aggregates, and a
    secondary index would cost ~15% of the insert rate for queries nothing in the registry makes."""

    __tablename__ = "calls"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    tool: Mapped[str] = mapped_column(String(200), ForeignKey("tools.name"))
    session_id: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[float] = mapped_column(Double)
    duration: Mapped[float] = mapped_column(Double)
    status: Mapped[CallStatus] = mapped_column(
        Enum(
            CallStatus,
            native_enum=False,
            length=8,
            values_callable=lambda e: [m.value for m in e],
            name="call_status",
        )
    )
    error_type: Mapped[str | None] = mapped_column(String(255))
    input_size: Mapped[int | None] = mapped_column(BigInteger)
    output_size: Mapped[int | None] = mapped_column(BigInteger)


class ToolStat(Base):
    __tablename__ = "tool_stats"

    tool: Mapped[str] = mapped_column(String(200), ForeignKey("tools.name"), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    error_count: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[float] = mapped_column(Double)
    total_sq: Mapped[float] = mapped_column(Double)
    min: Mapped[float] = mapped_column(Double)
    max: Mapped[float] = mapped_column(Double)
    ewma_num: Mapped[float] = mapped_column(Double)
    ewma_den: Mapped[float] = mapped_column(Double)
    last_at: Mapped[float | None] = mapped_column(Double)


class ToolHistogram(Base):
    __tablename__ = "tool_histogram"

    tool: Mapped[str] = mapped_column(String(200), ForeignKey("tools.name"), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class Turn(Base):
    """One model turn (what the output-length predictor trains on).  ``tool`` is not a foreign key:
    a turn names the tool the model asked for, which need not be registered.  ``prompt_text`` is
    NULL unless the user opted in to storing prompts."""

    __tablename__ = "turns"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    session_id: Mapped[str | None] = mapped_column(String(255))
    agent: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(Integer)
    tool: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    prompt_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Double)


tools = Tool.__table__
calls = Call.__table__
tool_stats = ToolStat.__table__
tool_histogram = ToolHistogram.__table__
turns = Turn.__table__
