"""Sixteen agent processes on one PostgreSQL registry, the server restarted mid-run.

The server is a private PostgreSQL instance (``initdb`` into a temporary folder, its own port),
started with the binaries ``.ci/postgres.sh`` installs: restarting the shared test server would
break every other test using it.  Sixteen real processes (``multiprocessing``, spawn) record paced
tool calls, each with a unique call id in its session label; once a third of the calls are in,
the server is restarted (``pg_ctl restart -m fast``: every connection is cut).  Then each process
records one probe call of its own tool, flushes, and watches its in-memory estimates (no
``refresh()``) until it sees every other process's probe.

Checked: every call is stored exactly once (rows = unique call ids = calls made), the per-tool
statistics add up to the calls, every process's estimates of the shared tools end with every
process's calls in them, and every probe became visible to every process.  The delay between a
probe's commit and its first sighting elsewhere is measured and printed (docs/tool-registry.md
states it); it is not asserted, being a time.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
pytest.importorskip("asyncpg", reason="the postgres extra (asyncpg) is not installed")

from tool_registry import ToolRegistry  # noqa: E402
from tool_registry.writer import REFRESH_INTERVAL_S  # noqa: E402

PROCESSES = 16
CALLS = 300  # per process
PACE_S = 0.01  # between two calls of one process: the run lasts a few seconds
TOOLS = ("search", "calculator", "browser", "shell")
SEEN_TIMEOUT_S = 12 * REFRESH_INTERVAL_S  # a guard against hanging, not a measured bound


@dataclass(frozen=True)
class PrivatePostgres:
    """A PostgreSQL instance of the test's own, which it may restart."""

    bindir: Path
    datadir: Path
    port: int
    user: str | None  # run the server tools as this user (root cannot run them)

    @property
    def url(self) -> str:
        return f"postgresql://lamps@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def ctl(self, *args: str) -> None:
        # -l on every call: a restarted server without it writes to (and holds open) our pipe
        log = str(self.datadir.parent / "server.log")
        self.run("pg_ctl", "-D", str(self.datadir), "-l", log, "-w", "-t", "60", *args)


def _bindir() -> Path | None:
    given = os.environ.get("LAMPS_PG_BINDIR")
    if given:
        return Path(given)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        if os.environ.get("LAMPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("LAMPS_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries (initdb)")
        pytest.skip("no PostgreSQL server binaries (run .ci/postgres.sh, or set LAMPS_PG_BINDIR)")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="lamps-pg-"))
    datadir = root / "data"
    datadir.mkdir(mode=0o700)
    if user is not None:
        owner = pwd.getpwnam(user)
        for path in (root, datadir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = PrivatePostgres(bindir=bindir, datadir=datadir, port=_free_port(), user=user)
    try:
        server.run("initdb", "-D", str(datadir), "-U", "lamps", "--auth=trust", "-E", "UTF8",
                   "--no-sync")  # fmt: skip
        options = f"-p {server.port} -c listen_addresses=127.0.0.1 -k {datadir} -c fsync=off"
        server.ctl("-o", options, "start")
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            server.ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def agent_process(url: str, spill: str, index: int, counter: Any, start: Any, results: Any) -> None:
    """One agent process: paced tool calls, then the probe, then watch for the others'."""
    with ToolRegistry(url, spill_dir=spill) as reg:
        start.wait()
        for i in range(CALLS):
            duration = 0.01 * (1 + (i + index) % 7)
            reg.record(TOOLS[i % len(TOOLS)], duration=duration, session_id=f"a{index}-c{i}")
            with counter.get_lock():
                counter.value += 1
            time.sleep(PACE_S)
        reg.flush(timeout=120)
        reg.record(f"probe{index}", duration=1.0, session_id=f"a{index}-probe")
        reg.flush(timeout=120)
        committed = time.time()
        seen: dict[int, float] = {}
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        while len(seen) < PROCESSES - 1 and time.monotonic() < deadline:
            for j in range(PROCESSES):
                if j != index and j not in seen and reg.estimate(f"probe{j}").count > 0:
                    seen[j] = time.time()
            time.sleep(0.02)
        # aggregates loaded with (or after) the last probe include every process's calls
        counts = {tool: reg.estimate(tool).count for tool in TOOLS}
        results.put(
            {
                "index": index,
                "committed": committed,  # its own probe stored; it watches from here on
                "seen": seen,
                "counts": counts,
                "failures": reg.num_failures,
                "spilled": reg.num_spilled,
            }
        )


def test_sixteen_processes_survive_a_server_restart(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    start = ctx.Event()
    results = ctx.Queue()
    spill = str(tmp_path / "spill")
    url = private_postgres.url
    ToolRegistry(url, spill_dir=spill).close()  # the schema, so start-up is not the test
    workers = [
        ctx.Process(target=agent_process, args=(url, spill, i, counter, start, results))
        for i in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    start.set()
    total = PROCESSES * CALLS
    deadline = time.monotonic() + 300
    while counter.value < total // 3:
        assert time.monotonic() < deadline, "the agent processes did not get going"
        time.sleep(0.05)
    t0 = time.monotonic()
    private_postgres.ctl("-m", "fast", "restart")
    restart_s = time.monotonic() - t0
    after_restart = counter.value
    reports = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0

    assert after_restart < total  # calls were still being recorded once the server was back
    with ToolRegistry(url, spill_dir=spill) as reg:
        calls = list(reg.iter_calls())
        stats = {s.tool: s.count for s in reg.stats()}
    shared = [c for c in calls if not c.tool.startswith("probe")]
    labels = [c.session_id for c in shared]
    assert len(shared) == total  # every call stored ...
    assert len(set(labels)) == total  # ... once
    assert set(labels) == {f"a{p}-c{i}" for p in range(PROCESSES) for i in range(CALLS)}
    expected = {t: sum(1 for i in range(CALLS) if TOOLS[i % len(TOOLS)] == t) * PROCESSES
                for t in TOOLS}  # fmt: skip
    assert {t: stats[t] for t in TOOLS} == expected  # the aggregates count each call once
    assert all(stats[f"probe{p}"] == 1 for p in range(PROCESSES))

    delays = []
    committed = {r["index"]: r["committed"] for r in reports}
    for report in reports:
        others = set(range(PROCESSES)) - {report["index"]}
        assert set(report["seen"]) == others, report["index"]  # every probe seen, no refresh()
        assert report["counts"] == expected, report["index"]  # everyone's calls in the estimates
        for j, when in report["seen"].items():
            start_watch = max(committed[j], report["committed"])
            delays.append(max(0.0, when - start_watch))
    delays.sort()
    print(
        f"\nfleet: {PROCESSES} processes x {CALLS} calls, server restart {restart_s:.2f} s "
        f"at {after_restart}/{total} calls; write failures retried "
        f"{sum(r['failures'] for r in reports)}, spilled {sum(r['spilled'] for r in reports)}; "
        f"estimate visibility delay over {len(delays)} pairs: median "
        f"{delays[len(delays) // 2]:.2f} s, p90 {delays[int(len(delays) * 0.9)]:.2f} s, "
        f"max {delays[-1]:.2f} s (refresh interval {REFRESH_INTERVAL_S:.0f} s)"
    )
