"""The async storage layer: one class that owns the SQLAlchemy engine and every SQL statement.

Each batch of calls is written in one transaction together with the aggregate updates it implies:
calls are inserted with ``ON CONFLICT DO NOTHING ... RETURNING id`` so a batch retried after a
lost acknowledgement adds nothing twice, and only the rows actually inserted feed the atomic
``count = count + :n`` style aggregate upserts.  Rows are locked in a fixed order (tools by name,
histogram buckets by (tool, bucket)) so concurrent writers on PostgreSQL cannot deadlock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import event, func, make_url, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tool_registry.aggregate import Aggregate, aggregate_batch
from tool_registry.errors import RegistryUnavailableError
from tool_registry.models import calls, tool_histogram, tool_stats, tools
from tool_registry.schema import ensure_schema
from tool_registry.types import CallRecord, CallStatus, ToolInfo
from tool_registry.urls import is_sqlite, mask_password, sqlite_path

CONNECT_TIMEOUT_S = 10.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
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
        self._password = make_url(url).password
        self._sqlite = is_sqlite(url)
        self._dialect: Any = sqlite if self._sqlite else postgresql
        self._known_tools: set[str] = set()
        self.engine: AsyncEngine = self._create_engine()

    def _create_engine(self) -> AsyncEngine:
        if self._sqlite:
            path = sqlite_path(self.url)
            if path is not None:
                try:
                    path.expanduser().parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise self.unavailable(exc) from exc
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        return create_async_engine(
            self.url,
            pool_pre_ping=True,
            pool_size=2,
            connect_args={"timeout": CONNECT_TIMEOUT_S},
        )

    def unavailable(self, exc: BaseException) -> RegistryUnavailableError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return RegistryUnavailableError(
            f"cannot reach the tool registry database at {self.masked_url}: {reason}"
        )

    async def open(self) -> None:
        """Create or upgrade the schema; a clear error naming the (masked) URL if that fails."""
        try:
            await ensure_schema(self.engine)
        except Exception as exc:
            raise self.unavailable(exc) from exc

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

    async def write_batch(self, records: Sequence[CallRecord]) -> tuple[int, dict[str, Aggregate]]:
        """Insert ``records`` (ids already set) and update the aggregates, in one transaction.

        Returns the number of rows actually inserted (rows whose id already existed, from a retry
        of a batch that did commit, are skipped) and the fresh aggregates of the batch's tools.
        """
        names = sorted({record.tool for record in records})
        async with self.engine.begin() as conn:
            await self._ensure_tools(conn, names)
            inserted = await self._insert_calls(conn, records)
            fresh = [record for record in records if record.id in inserted]
            deltas = aggregate_batch(fresh)
            for name in names:
                if name in deltas:
                    await self._add_aggregate(conn, name, deltas[name])
            await self._add_buckets(conn, deltas)
            aggregates = await self._load_aggregates(conn, names)
        self._known_tools.update(names)
        return len(fresh), aggregates

    async def _ensure_tools(self, conn: AsyncConnection, names: Iterable[str]) -> None:
        missing = [name for name in names if name not in self._known_tools]
        if missing:
            now = time.time()
            stmt = self._insert(tools).on_conflict_do_nothing(index_elements=["name"])
            await conn.execute(stmt, [{"name": name, "registered_at": now} for name in missing])

    async def _insert_calls(
        self, conn: AsyncConnection, records: Sequence[CallRecord]
    ) -> set[uuid.UUID]:
        stmt = (
            self._insert(calls).on_conflict_do_nothing(index_elements=["id"]).returning(calls.c.id)
        )
        rows = [
            {
                "id": r.id,
                "tool": r.tool,
                "session_id": r.session_id,
                "started_at": r.started_at,
                "duration": r.duration,
                "status": r.status,
                "error_type": r.error_type,
                "input_size": r.input_size,
                "output_size": r.output_size,
            }
            for r in records
        ]
        result = await conn.execute(stmt, rows)
        return {uuid.UUID(str(value)) for value in result.scalars()}

    async def _add_aggregate(self, conn: AsyncConnection, name: str, delta: Aggregate) -> None:
        stmt = self._insert(tool_stats).values(
            tool=name,
            count=delta.count,
            error_count=delta.error_count,
            total=delta.total,
            total_sq=delta.total_sq,
            min=delta.min,
            max=delta.max,
            ewma_num=delta.ewma_num,
            ewma_den=delta.ewma_den,
            last_at=delta.last_at,
        )
        new, c = stmt.excluded, tool_stats.c
        decay = delta.decay
        stmt = stmt.on_conflict_do_update(
            index_elements=["tool"],
            set_={
                "count": c.count + new.count,
                "error_count": c.error_count + new.error_count,
                "total": c.total + new.total,
                "total_sq": c.total_sq + new.total_sq,
                "min": self._least(c.min, new.min),
                "max": self._greatest(c.max, new.max),
                "ewma_num": c.ewma_num * decay + new.ewma_num,
                "ewma_den": c.ewma_den * decay + new.ewma_den,
                "last_at": self._greatest(func.coalesce(c.last_at, new.last_at), new.last_at),
            },
        )
        await conn.execute(stmt)

    async def _add_buckets(self, conn: AsyncConnection, deltas: dict[str, Aggregate]) -> None:
        rows = [
            {"tool": name, "bucket": bucket, "count": count}
            for name in sorted(deltas)
            for bucket, count in sorted(deltas[name].buckets.items())
        ]
        if not rows:
            return
        stmt = self._insert(tool_histogram)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tool", "bucket"],
            set_={"count": tool_histogram.c.count + stmt.excluded.count},
        )
        await conn.execute(stmt, rows)

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

    async def calls_page(
        self, *, after: uuid.UUID | None, limit: int, tool: str | None = None
    ) -> list[CallRecord]:
        """One page of calls in primary-key order (keyset pagination, for exports)."""
        query = select(calls).order_by(calls.c.id).limit(limit)
        if after is not None:
            query = query.where(calls.c.id > after)
        if tool is not None:
            query = query.where(calls.c.tool == tool)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            CallRecord(
                id=uuid.UUID(str(row.id)),
                tool=row.tool,
                session_id=row.session_id,
                started_at=row.started_at,
                duration=row.duration,
                status=CallStatus(row.status),
                error_type=row.error_type,
                input_size=row.input_size,
                output_size=row.output_size,
            )
            for row in rows
        ]
