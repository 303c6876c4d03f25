"""SIGTERM and SIGINT flush or spill the buffer, then chain to the application's own handler."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tool_registry import ToolRegistry

MakeRegistry = Callable[..., ToolRegistry]

# Nothing is written before the signal: a huge batch and flush interval keep it all in memory.
RECORDER = textwrap.dedent(
    """
    import os, signal, sys, time
    from tool_registry import ToolRegistry
    url, spill, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if mode == "app-handler":
        def handler(signum, frame):
            print("app handler ran", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, handler)
    reg = ToolRegistry(url, spill_dir=spill, batch_size=10**6, max_buffer=10**6,
                       flush_interval=3600)
    for i in range(count):
        reg.record("sig-tool", duration=0.001, session_id=str(i))
    if mode == "down":  # the database is gone: the buffer must go to the spill file
        async def down(rows, *, may_exist=False):
            raise ConnectionResetError("injected: database down")
        reg._store.write_batch = down
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _run_until_signal(url: str, spill_dir: Path, count: int, mode: str, signum: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", RECORDER, url, str(spill_dir), str(count), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    code = proc.wait(timeout=60)
    if mode == "app-handler":
        assert "app handler ran" in proc.stdout.read()
    return code


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_flushes_the_buffer_then_the_process_dies_of_it(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path, signum: int
) -> None:
    code = _run_until_signal(db_url, spill_dir, 100_000, "plain", signum)
    # SIGTERM's default is re-raised; SIGINT's raises KeyboardInterrupt, which Python turns
    # into death by SIGINT: either way the process dies of its signal, after the flush
    assert code == -signum
    reg = make_registry(db_url)
    reg.flush(timeout=60)  # what took over a second to write was spilled: replayed now
    (stats,) = reg.stats("sig-tool")
    assert stats.count == 100_000


def test_with_the_database_down_a_signal_spills_and_the_next_registry_replays(
    sqlite_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    assert _run_until_signal(sqlite_url, spill_dir, 20_000, "down", signal.SIGTERM) == -15
    spilled = [p for p in spill_dir.iterdir() if p.suffix == ".jsonl"]
    assert sum(len(p.read_text().splitlines()) for p in spilled) == 20_000
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in spilled)
    reg = make_registry(sqlite_url)
    reg.flush(timeout=60)
    assert reg.stats("sig-tool")[0].count == 20_000
    assert sum(1 for _ in reg.iter_calls()) == 20_000


def test_the_applications_own_handler_still_runs(
    sqlite_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    assert _run_until_signal(sqlite_url, spill_dir, 5_000, "app-handler", signal.SIGTERM) == 7
    reg = make_registry(sqlite_url)
    reg.flush(timeout=60)
    assert reg.stats("sig-tool")[0].count == 5_000
