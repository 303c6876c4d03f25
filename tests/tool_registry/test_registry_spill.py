"""The spill file under stress: a full or unwritable disk, huge files, files shared across PID
namespaces, corrupt lines, concurrent replays, private data."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from lamps_agent.cli.main import main
from tool_registry import ToolRegistry, spill
from tool_registry.ids import new_ids
from tool_registry.spill import SideFile, SpillFile, encode, read_batches, url_key
from tool_registry.store import Store
from tool_registry.types import CallRow, Row
from tool_registry.urls import resolve_url

MakeRegistry = Callable[..., ToolRegistry]


def block_writes(reg: ToolRegistry) -> threading.Event:
    """Fail every batch write (connection lost) until the returned event is set."""
    gate = threading.Event()
    real = reg._store.write_batch

    async def blocked(rows: Sequence[Row], *, may_exist: bool = False) -> Any:
        if not gate.is_set():
            raise OperationalError("INSERT", {}, ConnectionResetError("injected: down"))
        return await real(rows, may_exist=may_exist)

    reg._store.write_batch = blocked  # type: ignore[method-assign]
    return gate


def calls(count: int, tool: str = "late") -> list[CallRow]:
    return [(i, tool, None, 10.0, 1.0, "ok", None, None, None) for i in new_ids(count)]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def orphan_path(spill_dir: Path, url: str) -> Path:
    spill_dir.mkdir(parents=True, exist_ok=True)
    return spill_dir / f"{url_key(resolve_url(url))}.{dead_pid()}.abcd1234.jsonl"


# 6. a full or unwritable spill disk


def test_an_unwritable_spill_directory_never_raises_and_counts_the_loss(
    db_url: str, make_registry: MakeRegistry, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    reg = make_registry(db_url, batch_size=5, max_buffer=10, spill_dir=blocker / "spill")
    gate = block_writes(reg)
    for _ in range(100):
        reg.record("search", duration=0.3)  # no OSError: the contract is ValueError only
    assert reg.num_lost >= 80 and reg.num_spilled == 0
    gate.set()
    reg.flush(timeout=30)  # returns: lost records are not waited for
    assert reg.stats("search")[0].count == 100 - reg.num_lost
    reg.close()


def test_a_disk_full_mid_write_leaves_no_torn_line(
    sqlite_url: str, make_registry: MakeRegistry, spill_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = make_registry(sqlite_url, batch_size=5, max_buffer=10)
    gate = block_writes(reg)
    real_write = os.write
    state = {"full": True}

    def half_then_full(fd: int, data: Any) -> int:
        # Only the spill file's disk is full (other threads write to other files meanwhile).
        if state["full"] and os.readlink(f"/proc/self/fd/{fd}").startswith(str(spill_dir)):
            state["full"] = False
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(spill.os, "write", half_then_full)
    recorded = 0
    while reg.num_lost == 0 and recorded < 200:  # until the buffer overflows into the full disk
        reg.record("search", duration=0.3)
        recorded += 1
    assert reg.num_lost >= 1 and not state["full"]
    for path in spill_dir.glob("*.jsonl"):
        text = path.read_text()
        assert not text or text.endswith("\n")
        assert all(spill.decode(line) for line in text.splitlines())
    gate.set()
    reg.flush(timeout=30)
    assert reg.stats("search")[0].count == recorded - reg.num_lost


def test_a_failed_hand_over_does_not_kill_the_writer(
    sqlite_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(sqlite_url, batch_size=5, max_buffer=10)
    gate = block_writes(reg)
    for _ in range(50):
        reg.record("search", duration=0.3)
    spill_file = reg._writer._spill
    real_take = spill_file.take
    failures = {"left": 2}

    def full_disk() -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_take()

    spill_file.take = full_disk  # type: ignore[method-assign]
    gate.set()
    reg.flush(timeout=30)
    assert failures["left"] == 0 and reg.stats("search")[0].count == 50


# 7. replay streams the file


def test_replay_reads_a_spill_file_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as file:
        for _ in range(10):
            file.writelines(encode(row) + "\n" for row in calls(10_000))
    quarantine = SideFile(tmp_path, "k", spill.QUARANTINE_SUFFIX, "x")
    tracemalloc.start()
    try:
        total = sum(len(batch) for batch in read_batches(path, 500, quarantine))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 100_000
    assert peak < 4_000_000, peak  # the whole file as rows would take ~50 MB


# 8. ownership by lock, not by PID; idempotent concurrent replays


def test_a_file_locked_by_a_writer_in_another_namespace_is_not_taken(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    """The file's PID is dead here, as a live writer in another container looks; its lock says
    it is alive."""
    orphan = orphan_path(spill_dir, db_url)
    orphan.write_text("".join(encode(r) + "\n" for r in calls(7)))
    fd = os.open(orphan, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        reg = make_registry(db_url)
        reg.flush(timeout=30)
        assert reg.stats("late") == [] and orphan.exists()
    finally:
        os.close(fd)  # the writer dies: the kernel drops its lock
    successor = make_registry(db_url)
    successor.flush(timeout=30)
    assert successor.stats("late")[0].count == 7
    assert not orphan.exists()


def test_concurrent_replays_of_the_same_rows_count_them_once(db_url: str) -> None:
    url = resolve_url(db_url)
    rows = calls(3_000, tool="replayed")

    async def replay_twice() -> None:
        first, second = Store(url), Store(url)
        await first.open()
        try:
            await asyncio.gather(
                *(
                    store.write_batch(rows[start : start + 1_000], may_exist=True)
                    for start in range(0, 3_000, 1_000)
                    for store in (first, second)
                )
            )
            aggregates = await first.load_aggregates(["replayed"])
            assert aggregates["replayed"].count == 3_000
            assert await first.count_calls("replayed") == 3_000
        finally:
            await first.dispose()
            await second.dispose()

    asyncio.run(replay_twice())


def test_spill_files_survive_a_password_rotation(tmp_path: Path) -> None:
    old = SpillFile(tmp_path, resolve_url("postgresql://u:old-secret@h:5432/db"))
    old.write(calls(3))
    old.close()
    new = SpillFile(tmp_path, resolve_url("postgresql://u:new-secret@h:5432/db"))
    (claim,) = new.claim_orphans()
    assert claim.count == 3
    assert not any("secret" in p.name for p in tmp_path.iterdir())
    other = SpillFile(tmp_path, resolve_url("postgresql://u:old-secret@h:5432/otherdb"))
    assert other.claim_orphans() == []


# 9. corrupt spill lines


def test_corrupt_spill_lines_are_quarantined_and_the_rest_replayed(
    db_url: str,
    make_registry: MakeRegistry,
    spill_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = calls(5)
    orphan = orphan_path(spill_dir, db_url)
    bad_lines = [
        b"\xff\xfe not utf-8",
        json.dumps(["not-hex!", "late", None, 10.0, 1.0, "ok", None, None, None]).encode(),
        json.dumps([new_ids(1)[0], "late", None, 10.0, 1.0, "weird", None, None, None]).encode(),
        json.dumps([new_ids(1)[0], "late", None, 10.0, "NaN", "ok", None, None, None]).encode(),
        b"[1, 2, 3]",
        b'{"turn": [1]}',
        b"[[[[[[[[",
    ]
    lines = [encode(row).encode() for row in good]
    orphan.write_bytes(b"\n".join([*lines[:2], *bad_lines, *lines[2:]]) + b"\n")
    reg = make_registry(db_url)
    reg.flush(timeout=30)
    assert reg.stats("late")[0].count == 5
    assert reg.num_quarantined == len(bad_lines)
    quarantine = spill_dir / f"{url_key(resolve_url(db_url))}.quarantine.jsonl"
    assert quarantine.read_bytes().splitlines() == bad_lines
    assert quarantine.stat().st_mode & 0o777 == 0o600
    reg.close()
    assert main(["tools", "export", "--format", "jsonl", "--calls", "--registry", db_url]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["id"] for row in exported) == sorted(row[0] for row in good)


def test_export_survives_a_status_an_old_replay_stored(
    sqlite_url: str, make_registry: MakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    from tool_registry.urls import sqlite_path

    make_registry(sqlite_url).close()
    path = sqlite_path(sqlite_url)
    assert path is not None
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO tools (name, registered_at) VALUES ('t', 0)")
        conn.execute(
            "INSERT INTO calls (id, tool, started_at, duration, status) "
            f"VALUES ('{new_ids(1)[0]}', 't', 1.0, 1.0, 'weird')"
        )
    assert main(["tools", "export", "--format", "csv", "--calls", "--registry", sqlite_url]) == 0
    assert ",error," in capsys.readouterr().out


# 10. private data


def test_failed_writes_never_log_prompt_text(
    sqlite_url: str, make_registry: MakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from tool_registry.types import PendingTurn

    caplog.set_level(logging.DEBUG)
    reg = make_registry(sqlite_url)
    secret = "top-secret-prompt-text"
    # bypass record_turn's sanitising, as an old spill file would: the write fails on SQLite
    reg._writer.submit(PendingTurn(None, "a", 0, None, None, 5, secret + "\ud800", 1.0))
    reg.flush(timeout=30)
    assert reg.num_dead_lettered == 1
    assert "writing 1 records" in caplog.text or "rejected" in caplog.text
    assert secret not in caplog.text


def test_spill_files_and_directory_are_private(
    sqlite_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    reg = make_registry(sqlite_url, batch_size=5, max_buffer=5)
    block_writes(reg)
    for _ in range(20):
        reg.record("search", duration=0.3, session_id="user-42")
    (path,) = spill_dir.glob("*.jsonl")
    assert path.stat().st_mode & 0o777 == 0o600
    assert spill_dir.stat().st_mode & 0o777 == 0o700
