"""Faults: an unreachable database, a database lost mid-run, retried batches, overflow, exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.exc import OperationalError

from tool_registry import RegistryUnavailableError, ToolRegistry
from tool_registry.types import CallRow

MakeRegistry = Callable[..., ToolRegistry]


def inject(reg: ToolRegistry, *, fail_before: int = 0, fail_after: int = 0) -> dict[str, int]:
    """Make the next ``fail_before`` batch writes fail before touching the database, then the next
    ``fail_after`` ones fail after committing (a lost acknowledgement)."""
    store = reg._store
    real = store.write_batch
    seen = {"calls": 0}

    async def flaky(rows: Sequence[CallRow], *, may_exist: bool = False) -> Any:
        seen["calls"] += 1
        if seen["calls"] <= fail_before:
            raise OperationalError("INSERT", {}, ConnectionResetError("injected: connection lost"))
        result = await real(rows, may_exist=may_exist)
        if seen["calls"] <= fail_before + fail_after:
            raise OperationalError("COMMIT", {}, ConnectionResetError("injected: ack lost"))
        return result

    store.write_batch = flaky  # type: ignore[method-assign]
    return seen


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_unreachable_postgres_names_the_url_with_password_masked(spill_dir: Path) -> None:
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    with pytest.raises(RegistryUnavailableError) as info:
        ToolRegistry("postgresql://bob:hunter2@127.0.0.1:1/agents", spill_dir=spill_dir)
    message = str(info.value)
    assert "postgresql+asyncpg://bob:***@127.0.0.1:1/agents" in message
    assert "hunter2" not in message
    assert isinstance(info.value, ConnectionError)


def test_unwritable_sqlite_path_is_a_clear_error(tmp_path: Path, spill_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RegistryUnavailableError, match="cannot reach the tool registry database"):
        ToolRegistry(f"sqlite:///{blocker}/sub/registry.db", spill_dir=spill_dir)


def test_failed_batches_are_retried_until_written(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url, batch_size=50)
    seen = inject(reg, fail_before=4)
    for _ in range(200):
        reg.record("search", duration=0.5)
    reg.flush(timeout=30)
    assert reg.num_failures == 4 and seen["calls"] >= 5
    (stats,) = reg.stats("search")
    assert stats.count == 200 and reg.pending == 0


def test_a_batch_committed_before_the_error_is_not_counted_twice(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url, batch_size=100)
    inject(reg, fail_after=2)
    for i in range(300):
        reg.record("search", duration=float(i % 3))
    reg.flush(timeout=30)
    assert reg.num_failures == 2
    (stats,) = reg.stats("search")
    assert stats.count == 300
    assert stats.mean == pytest.approx(1.0)
    assert sum(1 for _ in reg.iter_calls()) == 300


def test_pending_is_visible_while_the_database_is_down(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url, batch_size=10)
    inject(reg, fail_before=10**9)
    for _ in range(35):
        reg.record("search", duration=0.1)
    wait_until(lambda: reg.num_failures >= 2)
    assert reg.pending == 35
    with pytest.raises(TimeoutError, match="35 records pending"):
        reg.flush(timeout=0.2)


@pytest.mark.postgres
def test_postgres_lost_mid_run_recovers_without_loss(
    postgres_url: str, make_registry: MakeRegistry, tcp_proxy: Callable[[str, int], Any]
) -> None:
    parts = urlsplit(postgres_url)
    proxy = tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    via_proxy = postgres_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    reg = make_registry(via_proxy, batch_size=20)
    for _ in range(100):
        reg.record("search", duration=0.2)
    reg.flush(timeout=30)
    proxy.stop()  # the database is gone: open connections break, new ones are refused
    for _ in range(150):
        reg.record("search", duration=0.2)
    wait_until(lambda: reg.num_failures >= 2)
    assert reg.pending == 150
    proxy.start()
    reg.flush(timeout=30)
    assert reg.pending == 0
    direct = make_registry(postgres_url)
    (stats,) = direct.stats("search")
    assert stats.count == 250
    assert sum(1 for _ in direct.iter_calls()) == 250


def test_overflow_spills_to_a_file_and_replays(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    reg = make_registry(db_url, batch_size=5, max_buffer=10)
    gate = threading.Event()
    store = reg._store
    real = store.write_batch

    async def blocked(rows: Sequence[CallRow], *, may_exist: bool = False) -> Any:
        if not gate.is_set():
            raise OperationalError("INSERT", {}, ConnectionResetError("injected: down"))
        return await real(rows, may_exist=may_exist)

    store.write_batch = blocked  # type: ignore[method-assign]
    for _ in range(100):
        reg.record("search", duration=0.3)
    assert reg.num_spilled >= 80  # the buffer (10) and one in-flight batch (<= 10) hold the rest
    assert reg.pending == 100
    assert sum(len(p.read_text().splitlines()) for p in spill_dir.iterdir()) == reg.num_spilled
    gate.set()
    reg.flush(timeout=30)
    assert reg.stats("search")[0].count == 100 and reg.pending == 0
    assert list(spill_dir.iterdir()) == []


def test_close_with_database_down_keeps_records_for_the_next_registry(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    reg = make_registry(db_url, batch_size=10)
    inject(reg, fail_before=10**9)
    for _ in range(42):
        reg.record("search", duration=0.3)
    reg.close(timeout=0.3)
    assert sum(len(p.read_text().splitlines()) for p in spill_dir.iterdir()) == 42
    successor = make_registry(db_url)
    assert successor.pending == 42
    successor.flush(timeout=30)
    assert successor.stats("search")[0].count == 42
    assert list(spill_dir.iterdir()) == []


def test_spill_files_of_dead_processes_are_replayed(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    from tool_registry.ids import new_ids
    from tool_registry.spill import encode, url_key
    from tool_registry.urls import resolve_url

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spill_dir.mkdir(parents=True)
    orphan = spill_dir / f"{url_key(resolve_url(db_url))}.{dead.pid}.abcd1234.jsonl"
    records: list[CallRow] = [
        (record_id, "late", None, 10.0, 1.0, "ok", None, None, None) for record_id in new_ids(7)
    ]
    orphan.write_text("".join(encode(r) + "\n" for r in records) + '{"torn')
    reg = make_registry(db_url)
    reg.flush(timeout=30)
    assert reg.stats("late")[0].count == 7
    # the torn last line (a crash mid-write) is quarantined, not replayed
    (quarantine,) = spill_dir.iterdir()
    assert quarantine.name.endswith(".quarantine.jsonl") and reg.num_quarantined == 1
    assert quarantine.read_text() == '{"torn\n'
    quarantine.unlink()
    orphan.write_text("".join(encode(r) + "\n" for r in records))  # replayed twice: no duplicates
    again = make_registry(db_url)
    again.flush(timeout=30)
    assert again.stats("late")[0].count == 7


def test_records_are_flushed_at_interpreter_exit(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    script = textwrap.dedent(
        f"""
        from tool_registry import ToolRegistry
        reg = ToolRegistry({db_url!r}, spill_dir={str(spill_dir)!r}, batch_size=100_000,
                           flush_interval=60)
        for i in range(5000):
            reg.record("exit-tool", duration=0.01)
        # no close(): the atexit hook must write everything
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    reg = make_registry(db_url)
    (stats,) = reg.stats("exit-tool")
    assert stats.count == 5000
    assert not spill_dir.exists() or list(spill_dir.iterdir()) == []


def test_a_forked_child_refuses_records_and_exits_promptly(
    sqlite_url: str, spill_dir: Path, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from tool_registry import RegistryClosedError, ToolRegistry
        reg = ToolRegistry({sqlite_url!r}, spill_dir={str(spill_dir)!r})
        reg.record("parent", duration=0.1)
        pid = os.fork()
        if pid == 0:
            try:
                reg.record("child", duration=0.1)
            except RegistryClosedError as exc:
                sys.exit(0 if "forked" in str(exc) else 3)
            sys.exit(4)
        start = time.monotonic()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert time.monotonic() - start < 5, "the child hung at exit"
        reg.record("parent", duration=0.1)
        reg.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with ToolRegistry(sqlite_url, spill_dir=spill_dir) as reg:
        assert [(s.tool, s.count) for s in reg.stats()] == [("parent", 2)]


def test_postgres_without_its_extra_names_the_extra(
    spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # None in sys.modules: import fails
    with pytest.raises(RegistryUnavailableError) as info:
        ToolRegistry("postgresql://bob:hunter2@127.0.0.1:1/agents", spill_dir=spill_dir)
    message = str(info.value)
    assert "needs the postgres extra: pip install 'lamps-agent[postgres]'" in message
    assert "bob:***@127.0.0.1:1/agents" in message and "hunter2" not in message
