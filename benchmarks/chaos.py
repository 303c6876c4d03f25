"""Chaos run of the tool registry (docs/benchmarks.md, section "Reliability (registry)").

    python benchmarks/chaos.py registry [--backend sqlite|postgres|both] [--processes 16]
        [--threads 4] [--calls 204800] [--poison 0.01] [--duration 60] [--pg-stop 20]
        [--pg-cluster 15/main] [--json FILE]

Processes x threads record calls, each with a unique marker (its session id ``p<proc>t<thread>n<i>``),
at a steady pace over ``--duration`` seconds, into SQLite, then into PostgreSQL (a fresh database
on ``$LAMPS_TEST_POSTGRES_URL``).  Mid-run one writer is SIGKILLed (at 25 % of its records) and one
SIGTERMed (at 50 %); on PostgreSQL the server is stopped with ``pg_ctlcluster`` for ``--pg-stop``
seconds from 35 %, then restarted.  ``--poison`` of the records are poisoned: a lone surrogate or a
NUL (sanitised and stored), a 1 MB string, NaN or ``10**400`` (rejected with ``ValueError``).  A
spill file left by a "dead" process with 100 good and 3 corrupt lines is waiting in the spill
directory.  Afterwards a fresh registry replays what is left and every marker is counted:

- lost: accepted records (record() returned) missing from the database; the SIGKILLed process is
  reported apart, against its stated bound (buffer + batch in flight);
- duplicated: markers stored more than once;
- quarantined / dead-lettered / sanitised / rejected: the registries' own counters;
- aggregates: the sum of ``tool_stats.count`` equals the rows in ``calls``;
- SQLite: ``PRAGMA integrity_check``.

Exit status 0 when lost, duplicated and unexpected are 0, the aggregates match and the integrity
check passes.  Stopping PostgreSQL needs ``pg_ctlcluster`` (root or the cluster's owner); pass
``--pg-stop 0`` to skip it (a shared server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tool_registry import RegistryClosedError, ToolRegistry
from tool_registry.ids import new_ids
from tool_registry.spill import encode, url_key
from tool_registry.urls import mask_password, resolve_url, sqlite_path

STORED_KINDS = ("surrogate", "nul-tool")  # sanitised at record(), stored
REJECTED_KINDS = ("huge", "nan", "overflow")  # ValueError at record()
KINDS = STORED_KINDS + REJECTED_KINDS
ORPHAN_GOOD, ORPHAN_CORRUPT = 100, 3
KILL_AT, TERM_AT, PG_STOP_AT = 0.25, 0.50, 0.35


def poison_kind(proc: int, thread: int, n: int, rate: float) -> str | None:
    """Which poison record ``n`` of a thread carries (``None``: a good record); deterministic,
    so the checker knows without being told."""
    mixed = (n * 2_654_435_761 + thread * 40_503 + proc * 7_919) % 1_000_003
    if mixed >= rate * 1_000_003:
        return None
    return KINDS[(n + thread + proc) % len(KINDS)]


def marker(proc: int, thread: int, n: int) -> str:
    return f"p{proc}t{thread}n{n}"


def record_kwargs(proc: int, thread: int, n: int, rate: float) -> dict[str, Any]:
    kind = poison_kind(proc, thread, n, rate)
    kwargs: dict[str, Any] = {
        "tool": f"tool{n % 4}",
        "duration": 0.001 * (1 + n % 50),
        "session_id": marker(proc, thread, n),
    }
    if kind == "surrogate":
        kwargs["session_id"] += "\ud800"
    elif kind == "nul-tool":
        kwargs["tool"] = "tool\x00nul"
    elif kind == "huge":
        kwargs["session_id"] = "x" * 1_000_000
    elif kind == "nan":
        kwargs["duration"] = math.nan
    elif kind == "overflow":
        kwargs["duration"] = 10**400
    return kwargs


# worker processes


def run_worker(argv: list[str]) -> int:
    url, spill, progress_path, report_path = argv[:4]
    proc, threads, per_thread = int(argv[4]), int(argv[5]), int(argv[6])
    rate, duration = float(argv[7]), float(argv[8])
    reg = ToolRegistry(url, spill_dir=spill)
    progress = [0] * threads
    rejected = [0] * threads
    start = time.monotonic()

    def record_all(thread: int) -> None:
        pace = duration / per_thread
        for n in range(per_thread):
            try:
                reg.record(**record_kwargs(proc, thread, n, rate))
            except ValueError:
                rejected[thread] += 1
            except RegistryClosedError:
                return  # closed by SIGTERM: this record was not accepted
            progress[thread] = n + 1
            if n % 32 == 31 and (ahead := start + (n + 1) * pace - time.monotonic()) > 0:
                time.sleep(ahead)

    workers = [threading.Thread(target=record_all, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    while any(worker.is_alive() for worker in workers):
        _write_atomic(Path(progress_path), " ".join(map(str, progress)))
        workers[0].join(0.1)
    _write_atomic(Path(progress_path), " ".join(map(str, progress)))
    reg.close(timeout=60)
    report = {
        "rejected": sum(rejected),
        "sanitised": reg.num_sanitised,
        "lost": reg.num_lost,
        "dead_lettered": reg.num_dead_lettered,
        "quarantined": reg.num_quarantined,
        "spilled": reg.num_spilled,
        "failures": reg.num_failures,
    }
    _write_atomic(Path(report_path), json.dumps(report))
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# the orchestrator


@dataclass
class Options:
    processes: int
    threads: int
    calls: int
    poison: float
    duration: float
    pg_stop: float
    pg_cluster: str | None

    @property
    def per_thread(self) -> int:
        return math.ceil(self.calls / (self.processes * self.threads))


@dataclass
class Outcome:
    """What one backend's run measured; see the module docstring."""

    backend: str
    attempted: int = 0
    rejected: int = 0
    sanitised: int = 0
    stored_rows: int = 0
    lost: int = 0
    lost_to_sigkill: int = 0
    sigkill_bound: int = 0
    duplicated: int = 0
    unexpected: int = 0
    quarantined: int = 0
    dead_lettered: int = 0
    lost_to_disk: int = 0
    spilled: int = 0
    orphans_replayed: int = 0
    aggregates_match: bool = False
    integrity: str = "n/a"
    pg_stopped_s: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.unexpected == 0
            and self.aggregates_match
            and self.integrity in ("ok", "n/a")
            and self.orphans_replayed == ORPHAN_GOOD
            and self.quarantined == ORPHAN_CORRUPT
            and self.lost_to_sigkill <= self.sigkill_bound
        )


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    progress: Path
    report: Path
    fate: str = "survived"  # or "SIGKILL", "SIGTERM"

    def progress_counts(self) -> list[int]:
        try:
            return [int(x) for x in self.progress.read_text().split()]
        except (OSError, ValueError):
            return []


def plant_orphan(spill_dir: Path, url: str) -> None:
    """A spill file of a process that is gone: good lines to replay, corrupt ones to quarantine."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        (row_id, "orphan-tool", f"orphan{i}", 1.0, 0.5, "ok", None, None, None)
        for i, row_id in enumerate(new_ids(ORPHAN_GOOD))
    ]
    lines = [encode(row).encode() for row in rows]
    lines[10:10] = [
        b"\xff\xfe invalid utf-8",
        json.dumps(["not-hex", "t", None, 1.0, 0.5, "ok", None, None, None]).encode(),
        json.dumps([new_ids(1)[0], "t", None, 1.0, 0.5, "weird", None, None, None]).encode(),
    ]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = spill_dir / f"{url_key(resolve_url(url))}.{dead.pid}.0rphan00.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")


def start_workers(url: str, spill_dir: Path, work: Path, opts: Options) -> list[Worker]:
    workers = []
    for index in range(opts.processes):
        progress, report = work / f"progress{index}", work / f"report{index}.json"
        argv = [
            sys.executable,
            __file__,
            "_worker",
            url,
            str(spill_dir),
            str(progress),
            str(report),
            str(index),
            str(opts.threads),
            str(opts.per_thread),
            str(opts.poison),
            str(opts.duration),
        ]
        workers.append(Worker(index, subprocess.Popen(argv, env=_worker_env()), progress, report))
    return workers


def _worker_env() -> dict[str, str]:
    """The workers import the very ``tool_registry`` this process runs."""
    import tool_registry

    root = str(Path(tool_registry.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}


def fraction_done(workers: list[Worker], opts: Options) -> float:
    total = opts.processes * opts.threads * opts.per_thread
    return sum(sum(w.progress_counts()) for w in workers) / total


class PgOutage:
    """Stop the PostgreSQL cluster for a while, in a thread, with ``pg_ctlcluster``."""

    def __init__(self, cluster: str, seconds: float) -> None:
        self.version, self.name = cluster.split("/", 1)
        self.seconds = seconds
        self.stopped_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _ctl(self, action: str) -> None:
        cmd = ["pg_ctlcluster", self.version, self.name, action]
        subprocess.run([*cmd, "-m", "fast"] if action == "stop" else cmd, check=True)

    def _run(self) -> None:
        started = time.monotonic()
        self._ctl("stop")
        time.sleep(self.seconds)
        self.stopped_s = round(time.monotonic() - started, 1)
        self._ctl("start")


def drive_faults(workers: list[Worker], opts: Options, outage: PgOutage | None) -> None:
    """Kill one writer, terminate another and stop the server at their moments; wait for all."""
    killed = termed = False
    deadline = time.monotonic() + opts.duration * 4 + 300
    while any(w.proc.poll() is None for w in workers):
        if time.monotonic() > deadline:
            raise TimeoutError("the chaos run did not finish in time")
        done = fraction_done(workers, opts)
        if not killed and done >= KILL_AT:
            killed = _signal(workers[0], signal.SIGKILL)
        if not termed and done >= TERM_AT and len(workers) > 1:
            termed = _signal(workers[1], signal.SIGTERM)
        if outage is not None and outage.thread.ident is None and done >= PG_STOP_AT:
            outage.thread.start()
        time.sleep(0.05)
    if outage is not None and outage.thread.ident is not None:
        outage.thread.join()


def _signal(worker: Worker, signum: int) -> bool:
    worker.proc.send_signal(signum)
    worker.fate = signal.Signals(signum).name
    return True


def expected_markers(workers: list[Worker], opts: Options) -> dict[str, str]:
    """marker -> the fate of its process, for every record its process accepted (or, for a
    killed process, reported as accepted in its last progress line)."""
    expected: dict[str, str] = {}
    for w in workers:
        counts = w.progress_counts() or [0] * opts.threads
        for thread, reached in enumerate(counts):
            for n in range(reached):
                if poison_kind(w.index, thread, n, opts.poison) not in REJECTED_KINDS:
                    expected[marker(w.index, thread, n)] = w.fate
    return expected


def stored_markers(reg: ToolRegistry) -> Counter[str]:
    seen: Counter[str] = Counter()
    for call in reg.iter_calls():
        if call.session_id is not None:
            seen[call.session_id.rstrip("\ufffd")] += 1
    return seen


def check(url: str, spill_dir: Path, workers: list[Worker], opts: Options, out: Outcome) -> None:
    """Reopen (replaying what is left), then count markers and compare the aggregates."""
    with ToolRegistry(url, spill_dir=spill_dir) as reg:
        reg.flush(timeout=600)
        seen = stored_markers(reg)
        out.stored_rows = sum(seen.values())
        out.aggregates_match = sum(s.count for s in reg.stats()) == out.stored_rows
    out.orphans_replayed = sum(1 for m in seen if m.startswith("orphan"))
    expected = expected_markers(workers, opts)
    out.duplicated = sum(count - 1 for count in seen.values() if count > 1)
    out.unexpected = sum(
        1
        for m in seen
        if m not in expected and not m.startswith("orphan") and not _late(m, workers)
    )
    for m, fate in expected.items():
        if m not in seen:
            if fate == "SIGKILL":
                out.lost_to_sigkill += 1
            else:
                out.lost += 1
    path = sqlite_path(url) if url.startswith("sqlite") else None
    if path is not None:
        with sqlite3.connect(path) as conn:
            out.integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def _late(m: str, workers: list[Worker]) -> bool:
    """A record of a killed process accepted after its last progress line: not expected, not
    wrong either."""
    proc = int(m[1 : m.index("t")])
    return workers[proc].fate != "survived"


def collect_reports(workers: list[Worker], out: Outcome) -> None:
    for w in workers:
        try:
            report = json.loads(w.report.read_text())
        except (OSError, ValueError):
            out.notes.append(f"process {w.index} ({w.fate}) left no report")
            continue
        out.rejected += report["rejected"]
        out.sanitised += report["sanitised"]
        out.lost_to_disk += report["lost"]
        out.spilled += report["spilled"]


def run_backend(backend: str, url: str, opts: Options) -> Outcome:
    out = Outcome(backend=backend, attempted=opts.processes * opts.threads * opts.per_thread)
    out.sigkill_bound = 100_000 + 16 * 512  # max_buffer + one transaction in flight (defaults)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        work = Path(tmp)
        spill_dir = work / "spill"
        plant_orphan(spill_dir, url)
        outage = None
        if backend == "postgres" and opts.pg_stop > 0:
            outage = PgOutage(opts.pg_cluster or cluster_of(url), opts.pg_stop)
        workers = start_workers(url, spill_dir, work, opts)
        drive_faults(workers, opts, outage)
        out.pg_stopped_s = outage.stopped_s if outage is not None else 0.0
        collect_reports(workers, out)
        check(url, spill_dir, workers, opts, out)
        # counted from the files: a killed process cannot report what it quarantined
        out.quarantined = _lines(spill_dir.glob("*.quarantine.jsonl"))
        out.dead_lettered = _lines(spill_dir.glob("*.dead-letter.jsonl"))
        leftover = [p.name for p in spill_dir.iterdir() if "quarantine" not in p.name]
        if leftover:
            out.notes.append(f"spill files left: {leftover}")
    out.wall_s = round(time.monotonic() - started, 1)
    return out


def _lines(paths: Iterator[Path]) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in paths)


def cluster_of(url: str) -> str:
    """The ``pg_lsclusters`` cluster (``version/name``) listening on the URL's port."""
    port = str(urlsplit(url).port or 5432)
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        version, name, cluster_port = line.split()[:3]
        if cluster_port == port:
            return f"{version}/{name}"
    raise ValueError(f"no local PostgreSQL cluster on port {port}; pass --pg-cluster")


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="chaos-db-") as tmp:
        yield f"sqlite:///{tmp}/registry.db"


@contextmanager
def postgres_database() -> Iterator[str]:
    import asyncpg

    base = os.environ.get("LAMPS_TEST_POSTGRES_URL")
    if not base:
        raise ValueError('set LAMPS_TEST_POSTGRES_URL (eval "$(bash .ci/postgres.sh)")')
    name = f"lamps_chaos_{secrets.token_hex(4)}"
    admin = base.replace("postgresql+asyncpg://", "postgresql://")

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql(f"CREATE DATABASE {name}"))
    try:
        yield f"{base.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def print_table(outcomes: list[Outcome], opts: Options) -> None:
    print(
        f"{opts.processes} processes x {opts.threads} threads, {opts.per_thread:,} calls each, "
        f"poison {opts.poison:.1%}, paced over {opts.duration:g} s"
    )
    rows = [(name, [str(getattr(o, name)) for o in outcomes]) for name in _FIELDS]
    width = max(len(name) for name, _ in rows)
    print(" " * width + "".join(f"  {o.backend:>12}" for o in outcomes))
    for name, values in rows:
        print(f"{name:<{width}}" + "".join(f"  {v:>12}" for v in values))
    for o in outcomes:
        for note in o.notes:
            print(f"{o.backend}: {note}")


_FIELDS = (
    "attempted",
    "rejected",
    "sanitised",
    "stored_rows",
    "lost",
    "lost_to_sigkill",
    "sigkill_bound",
    "duplicated",
    "unexpected",
    "quarantined",
    "dead_lettered",
    "lost_to_disk",
    "spilled",
    "orphans_replayed",
    "aggregates_match",
    "integrity",
    "pg_stopped_s",
    "wall_s",
)


def registry_command(args: argparse.Namespace) -> int:
    opts = Options(
        processes=args.processes,
        threads=args.threads,
        calls=args.calls,
        poison=args.poison,
        duration=args.duration,
        pg_stop=args.pg_stop,
        pg_cluster=args.pg_cluster,
    )
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    outcomes = []
    for backend in backends:
        database = sqlite_database() if backend == "sqlite" else postgres_database()
        with database as url:
            print(f"{backend}: {mask_password(url)}", file=sys.stderr)
            outcomes.append(run_backend(backend, url, opts))
    print_table(outcomes, opts)
    if args.json:
        Path(args.json).write_text(
            json.dumps([{**asdict(o), "ok": o.ok} for o in outcomes], indent=2)
        )
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return run_worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("registry", help="the tool registry under faults and poison")
    reg.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    reg.add_argument("--processes", type=int, default=16)
    reg.add_argument("--threads", type=int, default=4)
    reg.add_argument("--calls", type=int, default=204_800)
    reg.add_argument("--poison", type=float, default=0.01)
    reg.add_argument("--duration", type=float, default=60.0, help="seconds the writers take")
    reg.add_argument("--pg-stop", type=float, default=20.0, help="seconds; 0: do not stop")
    reg.add_argument("--pg-cluster", default=None, help="VERSION/NAME (default: by the port)")
    reg.add_argument("--json", default=None, help="also write the outcome as JSON here")
    args = parser.parse_args(argv)
    if args.processes < 2 or args.threads < 1 or args.calls < 1:
        parser.error("--processes >= 2 (one is killed, one terminated), --threads >= 1")
    return registry_command(args)


if __name__ == "__main__":
    sys.exit(main())
