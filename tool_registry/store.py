"""The async storage layer: one class that owns the SQLAlchemy engine and every SQL statement.

Each batch of calls is written in one transaction together with the aggregate updates it implies:
calls are inserted with ``ON CONFLICT DO NOTHING`` (and, for a retry or a replay, ``RETURNING id``)
so a batch retried after a lost acknowledgement, or replayed by two processes at once, adds nothing
twice, and only the rows actually inserted feed the atomic
``count = count + :n`` style aggregate upserts.  Rows are locked in a fixed order (tools by name,
histogram buckets by (tool, bucket)) so concurrent writers on PostgreSQL cannot deadlock.  Model
turns ride in the same batches and transactions, inserted the same idempotent way; they feed no
aggregate.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, cast

from sqlalchemy import String, event, func, select, text, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tool_registry.aggregate import Aggregate, aggregate_batch
from tool_registry.errors import RegistryError, RegistryUnavailableError
from tool_registry.models import calls, tool_histogram, tool_stats, tools, turns
from tool_registry.schema import ensure_schema
from tool_registry.types import (
    CALL_FIELDS,
    CallRecord,
    CallRow,
    CallStatus,
    Row,
    ToolInfo,
    TurnRecord,
    TurnRow,
)
from tool_registry.urls import is_sqlite, mask_password, redact, sqlite_path

_STATUSES = {status.value: status for status in CallStatus}
CONNECT_TIMEOUT_S = 10.0  # a server that does not answer a connect: give up, retry later
STATEMENT_TIMEOUT_S = 30.0  # a statement on a hung connection (asyncpg command_timeout)
SQLITE_BUSY_TIMEOUT_S = 30.0  # waiting for another process's SQLite write lock
SCHEMA_ATTEMPTS = 3


def _may_be_a_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already exists" in text or "locked" in text or "duplicate" in text


# Hand-written SQL for the hot path: the same text on SQLite and PostgreSQL but for min/max, and
# no per-row work in SQLAlchemy.  Columns are listed explicitly; models.py defines the tables.
_CALL_COLUMNS = CALL_FIELDS
_PG_INSERT_CALLS = (
    f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) SELECT * FROM unnest("
    "$1::uuid[], $2::varchar[], $3::varchar[], $4::float8[], $5::float8[], $6::varchar[], "
    "$7::varchar[], $8::int8[], $9::int8[]) ON CONFLICT (id) DO NOTHING"
)
_PG_INSERT_CALLS_RETURNING = _PG_INSERT_CALLS + " RETURNING id"
_ROWS_PER_INSERT = 50  # 450 parameters: under SQLite's oldest limit of 999
_UPSERT_STATS = """
INSERT INTO tool_stats (tool, count, error_count, total, total_sq, min, max, ewma_num, ewma_den,
                        last_at)
VALUES (:tool, :count, :error_count, :total, :total_sq, :min, :max, :ewma_num, :ewma_den, :last_at)
ON CONFLICT (tool) DO UPDATE SET
    count = tool_stats.count + excluded.count,
    error_count = tool_stats.error_count + excluded.error_count,
    total = tool_stats.total + excluded.total,
    total_sq = tool_stats.total_sq + excluded.total_sq,
    min = {least}(tool_stats.min, excluded.min),
    max = {greatest}(tool_stats.max, excluded.max),
    ewma_num = tool_stats.ewma_num * :decay + excluded.ewma_num,
    ewma_den = tool_stats.ewma_den * :decay + excluded.ewma_den,
    last_at = {greatest}(COALESCE(tool_stats.last_at, excluded.last_at), excluded.last_at)
"""
_UPSERT_BUCKETS = """
INSERT INTO tool_histogram (tool, bucket, count) VALUES (:tool, :bucket, :count)
ON CONFLICT (tool, bucket) DO UPDATE SET count = tool_histogram.count + excluded.count
"""


def _insert_calls_sql(paramstyle: str, rows: int = 1, *, returning: bool = False) -> str:
    """``INSERT INTO calls`` of ``rows`` rows in the driver's own parameter style."""
    count = len(_CALL_COLUMNS) * rows
    if paramstyle == "qmark":
        marks = ["?"] * count
    elif paramstyle == "numeric_dollar":
        marks = [f"${i}" for i in range(1, count + 1)]
    else:
        marks = ["%s"] * count
    width = len(_CALL_COLUMNS)
    values = ", ".join(
        f"({', '.join(marks[start : start + width])})" for start in range(0, count, width)
    )
    sql = f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) VALUES {values} ON CONFLICT (id) DO NOTHING"
    return sql + " RETURNING id" if returning else sql


def _split(rows: Sequence[Row]) -> tuple[Sequence[CallRow], Sequence[TurnRow]]:
    """(calls, turns) of a batch; a batch of calls only is passed on as it is."""
    turn_rows = [row for row in rows if type(row) is TurnRow]
    if not turn_rows:
        return cast("Sequence[CallRow]", rows), turn_rows  # no TurnRow: all are calls
    return cast("list[CallRow]", [row for row in rows if type(row) is not TurnRow]), turn_rows


def _stats_rows(deltas: dict[str, Aggregate]) -> list[dict[str, object]]:
    # sorted: concurrent writers lock rows in the same order, so they cannot deadlock
    return [
        {
            "tool": name,
            "count": d.count,
            "error_count": d.error_count,
            "total": d.total,
            "total_sq": d.total_sq,
            "min": d.min,
            "max": d.max,
            "ewma_num": d.ewma_num,
            "ewma_den": d.ewma_den,
            "last_at": d.last_at,
            "decay": d.decay,
        }
        for name, d in sorted(deltas.items())
    ]


def _bucket_rows(deltas: dict[str, Aggregate]) -> list[dict[str, object]]:
    return [
        {"tool": name, "bucket": bucket, "count": count}
        for name in sorted(deltas)
        for bucket, count in sorted(deltas[name].buckets.items())
    ]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _tool_info(row: Any) -> ToolInfo:
    return ToolInfo(
        name=row.name,
        description=row.description,
        api_type=row.api_type,
        duration_hint=row.duration_hint,
        registered_at=row.registered_at,
    )


class Store:
    """All database access of a registry; every method runs on the registry's writer loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.masked_url = mask_password(url)
        self._sqlite = is_sqlite(url)
        self._dialect: Any = sqlite if self._sqlite else postgresql
        self._known_tools: set[str] = set()
        self.engine: AsyncEngine = self._create_engine()
        least, greatest = ("min", "max") if self._sqlite else ("least", "greatest")
        self._insert_calls_sql = _insert_calls_sql(self.engine.dialect.paramstyle)
        self._insert_calls_multi_sql = _insert_calls_sql(
            self.engine.dialect.paramstyle, _ROWS_PER_INSERT
        )
        self._insert_tool_sql = text(
            "INSERT INTO tools (name, registered_at) VALUES (:name, :registered_at) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self._upsert_stats_sql = text(_UPSERT_STATS.format(least=least, greatest=greatest))
        self._upsert_buckets_sql = text(_UPSERT_BUCKETS)

    def _create_engine(self) -> AsyncEngine:
        if self._sqlite:
            # aiosqlite logs every statement with its parameters (prompt text) at DEBUG, which
            # `lamps-agent -v` turns on: keep it at INFO unless the user set its level
            driver_log = logging.getLogger("aiosqlite")
            if driver_log.level == logging.NOTSET:
                driver_log.setLevel(logging.INFO)
            path = sqlite_path(self.url)
            if path is not None:
                try:
                    path.expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise self.unavailable(exc) from exc
            engine = create_async_engine(
                self.url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
                hide_parameters=True,  # a failed write must never log prompt text
            )
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        try:
            importlib.import_module("asyncpg")  # the postgres extra; SQLAlchemy needs it
        except ModuleNotFoundError as exc:
            raise RegistryUnavailableError(
                f"the tool registry at {self.masked_url} needs the postgres extra: "
                "pip install 'lamps-agent[postgres]'"
            ) from exc
        return create_async_engine(
            self.url,
            pool_pre_ping=True,
            pool_size=2,
            hide_parameters=True,
            # timeout: the connect; command_timeout: every statement, so a hung server (no reset,
            # a network partition) ends in an error the writer retries, never a wait forever
            connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": STATEMENT_TIMEOUT_S},
        )

    def describe_error(self, exc: BaseException) -> str:
        """One line about ``exc``, fit for a log: the first line only (SQLAlchemy appends the
        statement after it), secrets of the URL masked."""
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        return redact(reason, self.url)

    def unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        return RegistryUnavailableError(
            f"cannot reach the tool registry database at {self.masked_url}: "
            f"{self.describe_error(exc)}"
        )

    async def open(self) -> None:
        """Create or upgrade the schema; a clear error naming the (masked) URL if that fails."""
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                await ensure_schema(self.engine)
                return
            except RegistryError:
                raise  # already a clear message (a newer schema, a held migration lock)
            except Exception as exc:
                # Processes starting together on one new SQLite file can collide; the loser's
                # next attempt finds the schema made.  An unreachable server fails every time.
                if attempt == SCHEMA_ATTEMPTS - 1 or not _may_be_a_race(exc):
                    raise self.unavailable(exc) from exc
                await asyncio.sleep(0.2 * (attempt + 1))

    async def ping(self) -> None:
        """A trivial query: does the database answer at all?"""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    def _insert(self, table: Any) -> Any:
        return self._dialect.insert(table)

    def _least(self, a: Any, b: Any) -> Any:
        return func.min(a, b) if self._sqlite else func.least(a, b)

    def _greatest(self, a: Any, b: Any) -> Any:
        return func.max(a, b) if self._sqlite else func.greatest(a, b)

    # tools

    async def upsert_tool(self, info: ToolInfo) -> ToolInfo:
        """Insert a tool, or update the fields of ``info`` that are not ``None``."""
        values = {
            "name": info.name,
            "description": info.description,
            "api_type": info.api_type,
            "duration_hint": info.duration_hint,
            "registered_at": info.registered_at,
        }
        stmt = self._insert(tools).values(values)
        changes = {
            key: stmt.excluded[key]
            for key in ("description", "api_type", "duration_hint")
            if values[key] is not None
        }
        if changes:
            stmt = stmt.on_conflict_do_update(index_elements=["name"], set_=changes)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["name"])
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
            row = (await conn.execute(select(tools).where(tools.c.name == info.name))).one()
        self._known_tools.add(info.name)
        return _tool_info(row)

    async def get_tool(self, name: str) -> ToolInfo | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tools).where(tools.c.name == name))).first()
        return None if row is None else _tool_info(row)

    async def list_tools(self) -> list[ToolInfo]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(tools).order_by(tools.c.name))).all()
        return [_tool_info(row) for row in rows]

    # calls and aggregates

    async def write_batch(
        self, rows: Sequence[Row], *, may_exist: bool = False
    ) -> tuple[int, dict[str, Aggregate]]:
        """Insert calls (rows in ``calls`` column order, ids set) and model turns (``TurnRow``) and
        update the calls' aggregates, in one transaction.  Ids are 32 hex digits: how SQLAlchemy's
        ``Uuid`` stores them on SQLite, and a form asyncpg accepts.

        ``may_exist``: the batch may have been committed before (a retry after an error that hid
        a commit, or a spill-file replay); rows whose id is already stored are then skipped and
        do not count again.  Returns the number of rows inserted and the fresh aggregates of the
        batch's tools.
        """
        call_rows, turn_rows = _split(rows)
        names = sorted({row[1] for row in call_rows})
        async with self.engine.begin() as conn:
            await self._ensure_tools(conn, names)
            if call_rows:
                call_rows = await self._insert_calls(conn, call_rows, may_exist=may_exist)
            inserted_turns = await self._insert_turns(conn, turn_rows) if turn_rows else 0
            deltas = aggregate_batch(call_rows)
            if deltas:
                await conn.execute(self._upsert_stats_sql, _stats_rows(deltas))
                await conn.execute(self._upsert_buckets_sql, _bucket_rows(deltas))
            aggregates = await self._load_aggregates(conn, names)
        self._known_tools.update(names)
        return len(call_rows) + inserted_turns, aggregates

    async def _insert_turns(self, conn: AsyncConnection, rows: Sequence[TurnRow]) -> int:
        # model turns are a few per second at most: plain SQLAlchemy, no hand-written SQL
        values = [{**row._asdict(), "id": uuid.UUID(hex=row.id)} for row in rows]
        stmt = self._insert(turns).on_conflict_do_nothing(index_elements=["id"])
        result = await conn.execute(stmt.returning(turns.c.id), values)
        return len(result.all())

    async def _insert_calls(
        self, conn: AsyncConnection, rows: Sequence[CallRow], *, may_exist: bool
    ) -> Sequence[CallRow]:
        """Insert ``rows`` (ids already stored are skipped: ``ON CONFLICT DO NOTHING``); returns the
        rows actually inserted, the only ones the aggregates may count.  With ``may_exist`` the
        database says which (``RETURNING``), so concurrent replays of one spill file can never
        both count a row; fresh ids cannot be stored yet, so the hot path skips that."""
        if may_exist:
            inserted = await self._insert_calls_returning(conn, rows)
            return [row for row in rows if row[0] in inserted]
        if self._sqlite:  # 50 rows per statement: a fifth less CPU per row than one row each
            full = len(rows) // _ROWS_PER_INSERT * _ROWS_PER_INSERT
            if full:
                chunks = [
                    tuple(chain.from_iterable(rows[start : start + _ROWS_PER_INSERT]))
                    for start in range(0, full, _ROWS_PER_INSERT)
                ]
                await conn.exec_driver_sql(self._insert_calls_multi_sql, chunks)
            if full < len(rows):
                await conn.exec_driver_sql(self._insert_calls_sql, list(rows[full:]))
        else:  # one statement over arrays: far faster than a row-by-row executemany
            await conn.exec_driver_sql(_PG_INSERT_CALLS, tuple(map(list, zip(*rows, strict=True))))
        return rows

    async def _insert_calls_returning(
        self, conn: AsyncConnection, rows: Sequence[CallRow]
    ) -> set[str]:
        """The ids (32 hex digits) of ``rows`` this statement inserted."""
        if not self._sqlite:
            columns = tuple(map(list, zip(*rows, strict=True)))
            result = await conn.exec_driver_sql(_PG_INSERT_CALLS_RETURNING, columns)
            return {uuid.UUID(str(value)).hex for value in result.scalars()}
        inserted: set[str] = set()
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            sql = _insert_calls_sql(self.engine.dialect.paramstyle, len(chunk), returning=True)
            result = await conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))
            inserted.update(uuid.UUID(str(value)).hex for value in result.scalars())
        return inserted

    async def _ensure_tools(self, conn: AsyncConnection, names: Iterable[str]) -> None:
        missing = [name for name in names if name not in self._known_tools]
        if missing:
            now = time.time()
            await conn.execute(
                self._insert_tool_sql, [{"name": name, "registered_at": now} for name in missing]
            )

    async def load_aggregates(self, names: Sequence[str] | None = None) -> dict[str, Aggregate]:
        async with self.engine.connect() as conn:
            return await self._load_aggregates(conn, names)

    async def _load_aggregates(
        self, conn: AsyncConnection, names: Sequence[str] | None
    ) -> dict[str, Aggregate]:
        stats_query = select(tool_stats)
        hist_query = select(tool_histogram)
        if names is not None:
            stats_query = stats_query.where(tool_stats.c.tool.in_(names))
            hist_query = hist_query.where(tool_histogram.c.tool.in_(names))
        result: dict[str, Aggregate] = {}
        for row in (await conn.execute(stats_query)).mappings():
            result[row["tool"]] = Aggregate(
                count=row["count"],
                error_count=row["error_count"],
                total=row["total"],
                total_sq=row["total_sq"],
                min=row["min"],
                max=row["max"],
                ewma_num=row["ewma_num"],
                ewma_den=row["ewma_den"],
                last_at=row["last_at"],
            )
        for row in (await conn.execute(hist_query)).mappings():
            if row["tool"] in result:
                result[row["tool"]].buckets[row["bucket"]] = row["count"]
        return result

    async def count_calls(self, tool: str | None = None) -> int:
        query = select(func.count()).select_from(calls)
        if tool is not None:
            query = query.where(calls.c.tool == tool)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def _keyset_page(
        self, table: Any, *, after: str | None, limit: int, match: tuple[str, str | None]
    ) -> Sequence[Any]:
        """Rows of ``table`` in primary-key order after ``after``, optionally where one column
        equals a value (keyset pagination: no OFFSET, so each page costs the same)."""
        # status read as plain text: a value outside the enum must not break an export
        columns = [
            type_coerce(c, String).label(c.name) if c.name == "status" else c for c in table.c
        ]
        query = select(*columns).order_by(table.c.id).limit(limit)
        if after is not None:
            query = query.where(table.c.id > uuid.UUID(hex=after))
        column, value = match
        if value is not None:
            query = query.where(table.c[column] == value)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).all()

    async def calls_page(
        self, *, after: str | None, limit: int, tool: str | None = None
    ) -> list[CallRecord]:
        """One page of calls in primary-key order (keyset pagination, for exports)."""
        rows = await self._keyset_page(calls, after=after, limit=limit, match=("tool", tool))
        return [
            CallRecord(
                id=uuid.UUID(str(row.id)).hex,
                tool=row.tool,
                session_id=row.session_id,
                started_at=row.started_at,
                duration=row.duration,
                # a status no version writes (a database filled by an old replay): not "ok"
                status=_STATUSES.get(row.status, CallStatus.ERROR),
                error_type=row.error_type,
                input_size=row.input_size,
                output_size=row.output_size,
            )
            for row in rows
        ]

    async def turns_page(
        self, *, after: str | None, limit: int, agent: str | None = None
    ) -> list[TurnRecord]:
        """One page of model turns in primary-key order (keyset pagination)."""
        rows = await self._keyset_page(turns, after=after, limit=limit, match=("agent", agent))
        return [
            TurnRecord(
                id=uuid.UUID(str(row.id)).hex,
                agent=row.agent,
                step=row.step,
                tool=row.tool,
                prompt_tokens=row.prompt_tokens,
                output_tokens=row.output_tokens,
                session_id=row.session_id,
                prompt_text=row.prompt_text,
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def count_turns(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(turns))).scalar_one())
