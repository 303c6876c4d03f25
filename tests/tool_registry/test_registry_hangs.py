"""A database that hangs instead of failing: timeouts on every path, and a stuck write ends in a
spill, never a loss; schema locks and revisions that used to wedge start-up or mislead."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tool_registry import RegistryUnavailableError, SchemaTooNewError, ToolRegistry
from tool_registry.urls import sqlite_path

MakeRegistry = Callable[..., ToolRegistry]


def spilled_ids(spill_dir: Path) -> set[str]:
    import json

    return {
        json.loads(line)[0]
        for path in spill_dir.glob("*.jsonl")
        if "quarantine" not in path.name and "dead-letter" not in path.name
        for line in path.read_text().splitlines()
    }


def _via_proxy(postgres_url: str, tcp_proxy: Callable[[str, int], Any]) -> tuple[str, Any]:
    parts = urlsplit(postgres_url)
    proxy = tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    return postgres_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}"), proxy


@pytest.mark.postgres
def test_a_hung_postgres_ends_in_a_spill_and_close_returns_promptly(
    postgres_url: str,
    make_registry: MakeRegistry,
    tcp_proxy: Callable[[str, int], Any],
    spill_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tool_registry.store.STATEMENT_TIMEOUT_S", 1.0)
    monkeypatch.setattr("tool_registry.store.CONNECT_TIMEOUT_S", 1.0)
    url, proxy = _via_proxy(postgres_url, tcp_proxy)
    reg = make_registry(url, batch_size=50)
    for _ in range(100):
        reg.record("search", duration=0.2)
    reg.flush(timeout=30)
    proxy.freeze()  # a partition: no reset, no answer
    for _ in range(500):
        reg.record("search", duration=0.2)
    deadline = time.monotonic() + 10
    while reg.num_failures == 0:  # the statement timeout turns the hang into a retried error
        assert time.monotonic() < deadline, "a write on a hung connection never timed out"
        time.sleep(0.05)
    started = time.monotonic()
    reg.close(timeout=1.0)
    assert time.monotonic() - started < 8
    assert len(spilled_ids(spill_dir)) >= 500
    proxy.thaw()
    successor = make_registry(url)  # the same URL: the same spill files
    successor.flush(timeout=60)
    (stats,) = successor.stats("search")
    assert stats.count == 600
    assert sum(1 for _ in successor.iter_calls()) == 600


def test_a_locked_sqlite_file_ends_in_a_spill_and_close_returns_promptly(
    sqlite_url: str,
    make_registry: MakeRegistry,
    spill_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tool_registry.store.SQLITE_BUSY_TIMEOUT_S", 0.5)
    reg = make_registry(sqlite_url, batch_size=10)
    reg.record("search", duration=0.1)
    reg.flush(timeout=10)
    path = sqlite_path(sqlite_url)
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
    try:
        for _ in range(100):
            reg.record("search", duration=0.1)
        started = time.monotonic()
        reg.close(timeout=1.0)
        assert time.monotonic() - started < 6
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(spilled_ids(spill_dir)) >= 100
    successor = make_registry(sqlite_url)
    successor.flush(timeout=30)
    assert successor.stats("search")[0].count == 101


def test_records_left_at_exit_with_a_hung_database_are_spilled(
    sqlite_url: str, spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import asyncio
        from tool_registry import ToolRegistry
        reg = ToolRegistry({sqlite_url!r}, spill_dir={str(spill_dir)!r}, batch_size=100)
        async def hang(rows, *, may_exist=False):
            await asyncio.sleep(3600)
        reg._store.write_batch = hang
        for i in range(2000):
            reg.record("exit-tool", duration=0.01)
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert done.returncode == 0 and time.monotonic() - started < 20
    assert b"Traceback" not in done.stderr
    assert len(spilled_ids(spill_dir)) == 2000
    with ToolRegistry(sqlite_url, spill_dir=spill_dir) as reg:
        reg.flush(timeout=30)
        assert reg.stats("exit-tool")[0].count == 2000


@pytest.mark.postgres
def test_a_held_migration_lock_is_a_clear_error(
    postgres_url: str, spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg  # the postgres extra: imported here so the SQLite tests run without it

    from tool_registry import schema

    monkeypatch.setattr("tool_registry.schema.MIGRATION_LOCK_TIMEOUT_S", 1.0)

    async def hold_and_try() -> BaseException | None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", schema._PG_LOCK_KEY)
            try:
                await asyncio.to_thread(ToolRegistry, postgres_url, spill_dir=spill_dir)
            except RegistryUnavailableError as exc:
                return exc
            return None
        finally:
            await conn.close()

    started = time.monotonic()
    error = asyncio.run(hold_and_try())
    assert error is not None and "schema-migration lock" in str(error)
    assert time.monotonic() - started < 15


def test_a_newer_schema_revision_is_reported_as_such(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    make_registry(db_url).close()
    update = "UPDATE tool_registry_version SET version_num = '0099'"
    path = sqlite_path(db_url)
    if db_url.startswith("sqlite") and path is not None:
        with sqlite3.connect(path) as conn:
            conn.execute(update)
    else:
        import asyncpg  # only a PostgreSQL db_url gets here, and its fixture needs asyncpg

        async def newer() -> None:
            conn = await asyncpg.connect(db_url)
            await conn.execute(update)
            await conn.close()

        asyncio.run(newer())
    with pytest.raises(SchemaTooNewError, match=r"revision '0099'.*upgrade lamps-agent"):
        ToolRegistry(db_url, spill_dir=spill_dir)
