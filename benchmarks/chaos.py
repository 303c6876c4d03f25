"""Chaos runs of the tool registry and of the vLLM plug-in (docs/benchmarks.md, sections
"Reliability (registry)" and "Reliability (engine)").

    python benchmarks/chaos.py registry [--backend sqlite|postgres|both] [--processes 16]
        [--threads 4] [--calls 204800] [--poison 0.01] [--duration 60] [--pg-stop 20]
        [--pg-cluster 15/main] [--json FILE]
    python benchmarks/chaos.py engine [--policies lamps,wait] [--requests 10000]
        [--concurrency 32] [--abort-rate 0.1] [--stall-timeout 60] [--starve-seconds 60]
        [--ttl-max 10] [--client-strategy obey|advisory] [--model DIR] [--log-dir DIR]
        [--json FILE]

``registry``:

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

``engine``: for each policy, ``lamps-agent serve`` (the tiny local model unless ``--model``; KV of
2 MiB, 16 seats, ``LAMPS_STATS_FILE`` set, pin TTLs capped at ``--ttl-max``) gets ``--requests``
completions at ``--concurrency``, each built deterministically from its index and ``--seed``:
about a third with valid hints (tool calls with preserve / swap hints, so pins happen; some on a
few hot sessions sent concurrently), the rest with one defect each (wrong types, NaN / inf as
strings and as JSON numbers, ±1e308, 1 MB strings, unknown strategies and versions, missing keys,
extreme priorities, odd or huge session ids, no hints).  ``--abort-rate`` of them stream and hang
up after the first chunk.  Checked:

- no 5xx but where stock vLLM answers 500 too (a lone surrogate in ``session_id``), no connection
  error, no request over ``--stall-timeout``, no 400 where the body is valid for vLLM;
- the plug-in's ``hints.ok`` / ``malformed`` / ``missing`` equal what each case must count, and
  its ``errors`` are 0;
- idle again, before ``--ttl-max`` + 15 s: no pin held and every KV block free (the plug-in's
  housekeeping expires pins on an idle engine);
- starvation: a long request (1,200-token prompt, 64 tokens out, priority 1000) among short ones
  (priority -1000) sent at concurrency 32 over 16 seats for ``--starve-seconds`` and on until the
  long one is done; it completes, with short ones completing while it waits, for every policy
  that states a bound;
- the server answers ``/health`` at the end.

Exit status 0 when every check holds for every policy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lamps_agent.hints import LampsHints
from lamps_agent.request import KVStrategy
from tool_registry import RegistryClosedError, ToolRegistry
from tool_registry.ids import new_ids
from tool_registry.spill import encode, url_key
from tool_registry.urls import mask_password, resolve_url, sqlite_path

if TYPE_CHECKING:
    import aiohttp

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
        write_json(Path(args.json), outcomes)
    return 0 if all(o.ok for o in outcomes) else 1


# the engine: fuzzed hints against `lamps-agent serve`

ENGINE_VLLM_ARGS = (
    "--enforce-eager", "--block-size", "32", "--max-model-len", "2048",
    "--kv-cache-memory-bytes", str(2 * 2**20), "--max-num-seqs", "16",
)  # fmt: skip
TOKENS = (5, 300)  # token ids inside the tiny model's vocabulary
SESSIONS, HOT_SESSIONS = 1000, 4
MAX_TOOL_S = 3.0  # valid hints' tool_duration: pins of valid turns live <= 1.5 x 3 + 1 s
HUGE = 1_000_000
# What the plug-in says about how long a request can wait behind better-ranked ones.  Numbers
# are read from the policy objects (see starvation_bound); these words describe the order.
FIFO_LIKE = {
    "vllm": "FCFS: none ahead of it but earlier arrivals",
    "infercept": "FCFS by arrival: none ahead of it but earlier arrivals",
    "lamps-norank": "FCFS by session arrival: none ahead of it but earlier arrivals",
}
UNBOUNDED = {"sjf": "none stated: shortest predicted output first, a long request can starve"}


class Expect(Enum):
    """What the plug-in must count for a request (``hints.ok`` / ``malformed`` / ``missing``);
    or what vLLM answers before the request reaches the engine: ``REJECTED`` (400) or
    ``VLLM_500`` (a lone surrogate in ``session_id``: vLLM cannot encode it for its engine
    process, with or without the plug-in)."""

    OK = "ok"
    MALFORMED = "malformed"
    MISSING = "missing"
    REJECTED = "rejected"
    VLLM_500 = "vllm-500"  # stock vLLM answers 500 (checked with ``--policy stock``)


@dataclass(frozen=True, slots=True)
class Fuzzed:
    body: dict[str, Any]
    case: str
    expect: tuple[Expect, ...]  # one entry per count the plug-in makes
    abort: bool


def session_prompt(session: int, seed: int) -> list[int]:
    """The session's context: a deterministic prefix, so later turns hit the cached (or pinned)
    KV of earlier ones; a third of the sessions are long enough to press on the KV cache."""
    rng = random.Random(seed * 7_919 + session)
    length = rng.randrange(300, 1200) if session % 3 == 0 else rng.randrange(16, 200)
    return [rng.randrange(*TOKENS) for _ in range(length)]


def valid_body(rng: random.Random, model: str, session: int, seed: int) -> dict[str, Any]:
    """A well-formed request: hints as the middleware sends them, often ending in a tool call
    with a preserve or swap hint (so pins happen)."""
    max_tokens = rng.randint(1, 8)
    tool = rng.random() < 0.6
    hints = LampsHints(
        session_id=f"s{session}", priority=rng.randint(-5, 5), agent="chaos",
        step=rng.randrange(20), output_tokens=max_tokens, tool="search" if tool else None,
        tool_duration=round(rng.uniform(0.1, MAX_TOOL_S), 3) if tool else 0.0,
        kv_strategy=rng.choice((KVStrategy.PRESERVE, KVStrategy.SWAP)) if tool else KVStrategy.DISCARD,
    )  # fmt: skip
    prompt = session_prompt(session, seed) + [rng.randrange(*TOKENS) for _ in range(8)]
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        **hints.to_body(),
    }


_XargMutation = tuple[str, Any, Expect]
_XARG_MUTATIONS: dict[str, tuple[_XargMutation, ...]] = {
    "wrong-type": (
        ("lamps_step", "x", Expect.MALFORMED),
        ("lamps_output_tokens", 1.5, Expect.MALFORMED),
        ("lamps_tool", 7, Expect.MALFORMED),
        ("lamps_tool_duration", "fast", Expect.MALFORMED),
        ("lamps_agent", 5, Expect.MALFORMED),
        ("lamps_kv_strategy", 3, Expect.MALFORMED),
        ("lamps_step", [1, 2], Expect.MALFORMED),
    ),
    "nan-inf-string": (
        ("lamps_tool_duration", "NaN", Expect.MALFORMED),
        ("lamps_tool_duration", "inf", Expect.MALFORMED),
        ("lamps_tool_duration", "-Infinity", Expect.MALFORMED),
        ("lamps_output_tokens", "nan", Expect.MALFORMED),
    ),
    "nan-inf-number": (  # JSON's NaN / Infinity tokens, as Python's json writes them
        ("lamps_tool_duration", math.nan, Expect.MALFORMED),
        ("lamps_tool_duration", math.inf, Expect.MALFORMED),
        ("lamps_last_tool_duration", -math.inf, Expect.MALFORMED),
    ),
    "1e308": (
        ("lamps_tool_duration", 1e308, Expect.OK),  # finite: a pin, its TTL capped
        ("lamps_tool_duration", -1e308, Expect.MALFORMED),
        ("lamps_output_tokens", 1e308, Expect.MALFORMED),
        ("lamps_step", -1e308, Expect.MALFORMED),
        ("lamps_output_tokens", 10**30, Expect.REJECTED),  # vLLM: beyond 64 bits
    ),
    "huge-string": (
        ("lamps_agent", "a" * HUGE, Expect.OK),
        ("lamps_tool", "t" * HUGE, Expect.OK),
        ("lamps_kv_strategy", "p" * HUGE, Expect.MALFORMED),
    ),
    "bad-strategy": tuple(
        ("lamps_kv_strategy", s, Expect.MALFORMED) for s in ("teleport", "", "PRESERVE", "swap ")
    ),
    "bad-version": tuple(
        ("lamps_hint_version", v, Expect.MALFORMED) for v in (2, 0, -1, "1", 1.5, 2**62)
    ),
    "missing-key": tuple(
        (k, None, Expect.MALFORMED)
        for k in ("lamps_hint_version", "lamps_step", "lamps_agent", "lamps_kv_strategy")
    ),
}
_BODY_MUTATIONS: dict[str, tuple[tuple[str, Any, tuple[Expect, ...]], ...]] = {
    "extreme-priority": (
        *(("priority", p, (Expect.OK,)) for p in (2**63 - 1, -(2**63), 2**31, -(2**31) - 1)),
        ("priority", 2**63, (Expect.REJECTED,)),
        ("priority", 1e308, (Expect.REJECTED,)),
    ),
    "huge-session-id": (  # never kept; the lamps_session_id copy stands in
        ("session_id", "s" * 300, (Expect.MALFORMED, Expect.OK)),
        ("session_id", "s" * HUGE, (Expect.MALFORMED, Expect.OK)),
    ),
    "odd-session-id": (
        *(("session_id", s, (Expect.OK,)) for s in ("", "セッション", "a\x00b")),
        ("session_id", "\ud800", (Expect.VLLM_500,)),
    ),
    "no-hints": (
        ("vllm_xargs", None, (Expect.MISSING,)),
        ("vllm_xargs", {"user_key": 7}, (Expect.MISSING,)),
    ),
    "bad-xargs": (
        ("vllm_xargs", "lamps", (Expect.REJECTED,)),
        ("vllm_xargs", {"lamps_step": {"a": 1}}, (Expect.REJECTED,)),
        ("session_id", 123, (Expect.REJECTED,)),
    ),
}
_BEFORE_ENGINE = (Expect.REJECTED, Expect.VLLM_500)
CASES = ("valid", "hot-session", *_XARG_MUTATIONS, *_BODY_MUTATIONS)


def fuzz_request(index: int, model: str, seed: int, abort_rate: float) -> Fuzzed:
    """Request ``index`` of the load: deterministic, whatever order requests are sent in.  About
    a third are valid (half of those on a few hot sessions, sent concurrently); the rest carry
    one defect each."""
    rng = random.Random(seed * 1_000_003 + index)
    roll = rng.random()
    hot = roll < 0.15
    session = rng.randrange(HOT_SESSIONS) if hot else rng.randrange(SESSIONS)
    body = valid_body(rng, model, session, seed)
    case = "hot-session" if hot else "valid" if roll < 0.35 else rng.choice(CASES[2:])
    expect: tuple[Expect, ...] = (Expect.OK,)
    if case in _XARG_MUTATIONS:
        key, value, single = rng.choice(_XARG_MUTATIONS[case])
        xargs = body["vllm_xargs"]
        if key == "lamps_last_tool_duration":
            xargs["lamps_last_tool"] = "search"
        if key == "lamps_tool_duration" and single is Expect.OK:
            xargs["lamps_tool"] = "search"  # a duration without a tool is malformed
        if value is None:
            xargs.pop(key)
        else:
            xargs[key] = value
        expect = (single,)
    elif case in _BODY_MUTATIONS:
        key, value, expect = rng.choice(_BODY_MUTATIONS[case])
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    abort = expect[0] not in _BEFORE_ENGINE and rng.random() < abort_rate
    if abort:
        body["stream"] = True
        body["max_tokens"] = max(body["max_tokens"], 4)  # a stream with something to cut
    return Fuzzed(body=body, case=case, expect=expect, abort=abort)


@dataclass(slots=True)
class LoadTally:
    """What the client saw, and the hint counts the plug-in must have made for it."""

    sent: int = 0
    completed: int = 0
    aborted: int = 0
    rejected: int = 0  # 4xx, as expected for the case
    vllm_500: int = 0  # 500 where stock vLLM answers 500 too
    unexpected_4xx: int = 0
    accepted_but_invalid: int = 0  # expected a 400, got an answer
    errors_5xx: int = 0
    transport_errors: int = 0
    stalls: int = 0
    max_latency_s: float = 0.0
    expected: Counter[str] = field(default_factory=Counter)
    first_failures: list[str] = field(default_factory=list)

    def fail(self, note: str) -> None:
        if len(self.first_failures) < 5:
            self.first_failures.append(note[:300])


async def send(
    session: aiohttp.ClientSession, url: str, req: Fuzzed, timeout: float, tally: LoadTally
) -> None:
    """One request; an aborting one reads the first chunk of its stream and hangs up."""
    import aiohttp

    started = time.monotonic()
    tally.sent += 1
    data = json.dumps(req.body).encode()  # NaN / Infinity as Python's json writes them
    try:
        async with asyncio.timeout(timeout):
            async with session.post(
                f"{url}/v1/completions", data=data, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status >= 500 and req.expect == (Expect.VLLM_500,):
                    tally.vllm_500 += 1
                elif resp.status >= 500:
                    tally.errors_5xx += 1
                    tally.fail(f"{req.case}: {resp.status} {(await resp.text())[:200]}")
                elif resp.status >= 400:
                    _rejected(tally, req, resp.status, await resp.text())
                elif req.abort:
                    await resp.content.readany()
                    resp.close()  # the connection goes: vLLM aborts the request
                    tally.aborted += 1
                else:
                    await resp.read()
                    tally.completed += 1
                if resp.status < 400:
                    _accepted(tally, req)
    except TimeoutError:
        tally.stalls += 1
        tally.fail(f"{req.case}: no answer in {timeout:g} s")
    except aiohttp.ClientError as exc:
        tally.transport_errors += 1
        tally.fail(f"{req.case}: {type(exc).__name__}: {exc}")
    tally.max_latency_s = max(tally.max_latency_s, time.monotonic() - started)


def _rejected(tally: LoadTally, req: Fuzzed, status: int, text: str) -> None:
    if req.expect == (Expect.REJECTED,):
        tally.rejected += 1
    else:
        tally.unexpected_4xx += 1
        tally.fail(f"{req.case}: unexpected {status} {text[:200]}")


def _accepted(tally: LoadTally, req: Fuzzed) -> None:
    if req.expect[0] in _BEFORE_ENGINE:
        tally.accepted_but_invalid += 1
        tally.fail(f"{req.case}: expected {req.expect[0].value}, got an answer")
        return
    for expect in req.expect:
        tally.expected[expect.value] += 1


async def fuzz_load(url: str, model: str, opts: EngineOptions) -> LoadTally:
    import aiohttp

    tally = LoadTally()
    indices = iter(range(opts.requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        for index in indices:
            req = fuzz_request(index, model, opts.seed, opts.abort_rate)
            await send(session, url, req, opts.stall_timeout, tally)

    connector = aiohttp.TCPConnector(limit=opts.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(opts.concurrency)))
    return tally


# starvation


@dataclass(slots=True)
class Starvation:
    bound: str
    completed: bool = False
    latency_s: float = -1.0
    under_pressure: bool = False  # short requests kept completing while it waited
    shorts_completed: int = 0
    note: str = ""


def starvation_bound(policy: str) -> tuple[str, bool]:
    """The policy's stated bound on waiting, in words, and whether it states one."""
    from lamps_agent.policies import make_policy
    from lamps_agent.predictors import OraclePredictor
    from lamps_agent.presets import load_preset

    made = make_policy(policy, predictor=OraclePredictor(), preset=load_preset("h100-llama3-8b"))
    threshold = getattr(made, "starvation_threshold", None)
    if threshold is not None:
        return f"starvation_threshold = {threshold} iterations, then the head of the queue", True
    patience = getattr(made, "patience", None)
    if patience is not None:
        return f"patience = {patience} iterations, then admitted regardless", True
    if policy in FIFO_LIKE:
        return FIFO_LIKE[policy], True
    return UNBOUNDED.get(policy, "not stated"), False


def _plain_body(
    model: str, prompt: list[int], max_tokens: int, priority: int, sid: str
) -> dict[str, Any]:
    hints = LampsHints(
        session_id=sid, priority=priority, agent="chaos", step=0, output_tokens=max_tokens,
        tool=None, tool_duration=0.0, kv_strategy=KVStrategy.DISCARD,
    )  # fmt: skip
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0.0, **hints.to_body()}  # fmt: skip


async def starve(url: str, model: str, policy: str, seconds: float) -> Starvation:
    """A long, low-priority request (1,200-token prompt, 64 tokens out) among short,
    high-priority ones (concurrency 32 > the engine's 16 seats, so the queue never empties) for
    ``seconds`` and on until the long one is done (a bound in iterations is a bound in seconds
    only on an engine of known speed); the long one must complete, within the policy's bound
    where it states one, while short ones keep completing."""
    import aiohttp

    bound, _ = starvation_bound(policy)
    out = Starvation(bound=bound)
    rng = random.Random(99)
    stop = time.monotonic() + seconds  # the stream's least length
    hard_stop = stop + 120.0
    long_done = asyncio.Event()
    long_body = _plain_body(model, [rng.randrange(*TOKENS) for _ in range(1200)], 64, 1000, "long")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as session:

        async def post(body: dict[str, Any]) -> bool:
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                await resp.read()
                return resp.status == 200

        async def short(body: dict[str, Any]) -> bool:
            try:
                return await post(body)
            except aiohttp.ClientError:
                return False

        async def shorts() -> None:
            n = 0
            while time.monotonic() < hard_stop and not (
                long_done.is_set() and time.monotonic() >= stop
            ):
                n += 1
                prompt = [rng.randrange(*TOKENS) for _ in range(rng.randrange(16, 64))]
                if await short(_plain_body(model, prompt, 4, -1000, f"short{n % 50}")):
                    out.shorts_completed += 1

        stream = [asyncio.create_task(shorts()) for _ in range(32)]
        await asyncio.sleep(min(2.0, seconds / 5))  # the queue is full before the long one comes
        started = time.monotonic()
        shorts_before = out.shorts_completed
        try:
            async with asyncio.timeout(seconds + 120):
                out.completed = await post(long_body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            out.note = f"long request: {type(exc).__name__}: {exc}"
        finished = time.monotonic()
        long_done.set()
        out.latency_s = round(finished - started, 2)
        out.under_pressure = out.completed and out.shorts_completed > shorts_before
        await asyncio.gather(*stream, return_exceptions=True)
    return out


# lies through the served hint path (issue 23): tenants that claim what they do not do

LIE_TENANTS = ("honest", "liar-short", "liar-final", "liar-hog")
LIE_TOOL, LIE_AGENT = "lookup", "chaos-lies"  # apart from the fuzz load's (its claims are random)
LIE_OUTPUT, LIE_RETURNED, LIE_TOOL_S, LIE_HOG = 8, 16, 1.0, 100_000


@dataclass(slots=True)
class Lies:
    """Sessions of an honest tenant beside lying ones, and what the plug-in discounted."""

    sessions: int = 0
    turns_sent: int = 0
    turns_completed: int = 0
    engine_s: dict[str, float] = field(default_factory=dict)  # mean per turn, by tenant
    discounted: dict[str, int] = field(default_factory=dict)  # the plug-in's, by tenant
    note: str = ""

    @property
    def ok(self) -> bool:
        """Every turn served; every liar discounted, the honest tenant never."""
        return (
            self.turns_completed == self.turns_sent > 0
            and all(self.discounted.get(t, 0) > 0 for t in LIE_TENANTS[1:])
            and self.discounted.get("honest", 0) == 0
        )


def lie_hints(tenant: str, honest: LampsHints) -> LampsHints:
    """What ``tenant`` claims for ``honest``'s turn (the simulator's lies, ``bench --lies``)."""
    if tenant == "liar-short":
        return dataclasses.replace(honest, output_tokens=1, tool_duration=0.0)
    if tenant == "liar-final":
        return dataclasses.replace(
            honest, tool=None, tool_duration=0.0, kv_strategy=KVStrategy.DISCARD
        )
    if tenant == "liar-hog":
        return dataclasses.replace(honest, output_tokens=LIE_HOG)
    return honest


async def lie_load(url: str, model: str, sessions: int, turns: int, seed: int) -> Lies:
    """``sessions`` sessions of ``turns`` turns for each tenant of ``LIE_TENANTS``, all at once:
    each turn writes ``LIE_OUTPUT`` tokens and, but for the last, calls a tool that takes
    ``LIE_TOOL_S`` (the client sleeps) and returns ``LIE_RETURNED`` tokens.  The honest tenant
    claims exactly that; the liars claim 1 token and instant tools, a final answer, or 100k
    tokens."""
    import aiohttp

    out = Lies(sessions=sessions * len(LIE_TENANTS))
    spent: dict[str, list[float]] = {t: [] for t in LIE_TENANTS}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def session(tenant: str, index: int) -> None:
            rng = random.Random(f"{seed}-{tenant}-{index}")
            prompt = [rng.randrange(*TOKENS) for _ in range(rng.randrange(32, 96))]
            for step in range(turns):
                last = step == turns - 1
                honest = LampsHints(
                    session_id=f"lie-{tenant}-{index}", priority=0, agent=LIE_AGENT, step=step,
                    output_tokens=LIE_OUTPUT, tool=None if last else LIE_TOOL,
                    tool_duration=0.0 if last else LIE_TOOL_S,
                    kv_strategy=KVStrategy.DISCARD if last else KVStrategy.PRESERVE,
                    tenant=tenant,
                )  # fmt: skip
                body = {"model": model, "prompt": prompt, "max_tokens": LIE_OUTPUT,
                        "ignore_eos": True, "temperature": 0.0,
                        **lie_hints(tenant, honest).to_body()}  # fmt: skip
                out.turns_sent += 1
                started = time.monotonic()
                async with http.post(f"{url}/v1/completions", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        out.note = f"{tenant}: turn {step} answered {resp.status}"
                        return
                out.turns_completed += 1
                spent[tenant].append(time.monotonic() - started)
                if not last:
                    await asyncio.sleep(LIE_TOOL_S)
                    filler = [rng.randrange(*TOKENS) for _ in range(LIE_OUTPUT + LIE_RETURNED)]
                    prompt = prompt + filler

        try:
            async with asyncio.timeout(300):
                await asyncio.gather(*(session(t, i) for t in LIE_TENANTS for i in range(sessions)))
        except (TimeoutError, aiohttp.ClientError) as exc:
            out.note = f"lies: {type(exc).__name__}: {exc}"
    out.engine_s = {t: round(sum(v) / len(v), 3) for t, v in spent.items() if v}
    return out


# one policy's run


@dataclass(frozen=True, slots=True)
class EngineOptions:
    model: str
    requests: int
    concurrency: int
    abort_rate: float
    stall_timeout: float
    starve_seconds: float
    ttl_max: float
    client_strategy: str
    seed: int
    lie_sessions: int = 6  # per tenant of LIE_TENANTS; 0: no lies phase
    lie_turns: int = 4


@dataclass
class EngineOutcome:
    """One policy's run; see ``engine_command``."""

    policy: str
    sent: int = 0
    completed: int = 0
    aborted: int = 0
    rejected_4xx: int = 0
    vllm_500: int = 0
    unexpected_4xx: int = 0
    errors_5xx: int = 0
    transport_errors: int = 0
    stalls: int = 0
    max_latency_s: float = 0.0
    load_s: float = 0.0
    hints_ok: int = -1
    hints_malformed: int = -1
    hints_missing: int = -1
    hints_expected: dict[str, int] = field(default_factory=dict)
    reason_classes: int = -1
    plugin_errors: int = -1
    pins_made: int = -1
    pins_at_load_end: int = -1  # as the plug-in wrote them when its engine ran dry
    pins_active_idle: int = -1
    free_blocks_idle: int = -1
    usable_blocks: int = -1
    kv_free_after_s: float = -1.0
    server_alive: bool = False
    starve_completed: bool = False
    starve_latency_s: float = -1.0
    starve_under_pressure: bool = False
    starve_shorts: int = 0
    starve_bound: str = ""
    starve_bound_stated: bool = True
    lies_run: bool = False
    lies_turns: str = ""  # completed / sent
    lies_discounted: str = ""  # the plug-in's discounted hints, by tenant
    lies_engine_s: str = ""  # mean time per turn, by tenant
    lies_ok: bool = False
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def hints_counted(self) -> bool:
        counted = {
            "ok": self.hints_ok,
            "malformed": self.hints_malformed,
            "missing": self.hints_missing,
        }
        return all(counted[k] == self.hints_expected.get(k, 0) for k in counted)

    @property
    def ok(self) -> bool:
        return (
            self.errors_5xx == 0
            and self.transport_errors == 0
            and self.stalls == 0
            and self.unexpected_4xx == 0
            and self.completed + self.aborted + self.rejected_4xx + self.vllm_500 == self.sent
            and self.server_alive
            and self.plugin_errors == 0
            and self.hints_counted
            and self.pins_active_idle == 0
            and self.free_blocks_idle == self.usable_blocks
            and self.starve_completed
            and (self.starve_under_pressure or not self.starve_bound_stated)
            and (self.lies_ok or not self.lies_run)
        )


def read_stats(path: Path, newer_than: float) -> dict[str, Any] | None:
    """The plug-in's stats file, if written after ``newer_than`` (a ``time.time()``)."""
    try:
        if path.stat().st_mtime <= newer_than:
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def wait_idle(path: Path, since: float, limit: float) -> tuple[dict[str, Any] | None, float]:
    """Poll the stats file until no pin is held and every block is free (the housekeeping thread
    writes it every 2 s on an idle engine), or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        data = read_stats(path, since)
        if data is not None:
            last = data
            if data["pins_active"] == 0 and data["free_blocks"] == data["usable_blocks"]:
                return data, round(time.time() - since, 1)
        time.sleep(0.5)
    return last, -1.0


def alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the server this process starts, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def run_policy(policy: str, opts: EngineOptions, work: Path) -> EngineOutcome:
    from adapters.vllm.tools.server import ManagedServer, ServeOptions

    out = EngineOutcome(policy=policy)
    out.starve_bound, out.starve_bound_stated = starvation_bound(policy)
    stats = work / f"{policy}.stats.json"
    stats.unlink(missing_ok=True)  # a file of an earlier run in the same --log-dir
    serve = ServeOptions(
        model=opts.model, policy=policy, port=free_port(), stats_file=str(stats),
        async_scheduler=False, vllm_args=ENGINE_VLLM_ARGS,
    )  # fmt: skip
    started = time.monotonic()
    env = {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
        "LAMPS_TTL_MAX": str(opts.ttl_max),
        "LAMPS_CLIENT_STRATEGY": opts.client_strategy,
    }
    with environ(**env), ManagedServer(serve, log_path=work / f"{policy}.log") as server:
        load_start = time.monotonic()
        tally = asyncio.run(fuzz_load(server.url, opts.model, opts))
        load_end = time.time()
        out.load_s = round(time.monotonic() - load_start, 1)
        _take_tally(out, tally)
        dry = read_stats(stats, 0.0)  # written when the engine ran dry
        out.pins_at_load_end = dry["pins_active"] if dry is not None else -1
        idle, out.kv_free_after_s = wait_idle(stats, load_end, opts.ttl_max + 15)
        _take_stats(out, idle)
        starved = asyncio.run(starve(server.url, opts.model, policy, opts.starve_seconds))
        out.starve_completed, out.starve_latency_s = starved.completed, starved.latency_s
        out.starve_under_pressure, out.starve_shorts = (
            starved.under_pressure,
            starved.shorts_completed,
        )
        if starved.note:
            out.notes.append(starved.note)
        if opts.lie_sessions > 0:
            _lie_phase(out, server.url, opts, stats)
        out.server_alive = alive(server.url)
        final = read_stats(stats, load_end)
        if final is not None:
            out.plugin_errors = max(out.plugin_errors, int(final["errors"]))
    out.wall_s = round(time.monotonic() - started, 1)
    return out


def _lie_phase(out: EngineOutcome, url: str, opts: EngineOptions, stats: Path) -> None:
    """Lying tenants beside an honest one; the plug-in's per-tenant discounts, read from its
    stats file once it was rewritten after the phase (every 2 s)."""
    out.lies_run = True
    lies = asyncio.run(lie_load(url, opts.model, opts.lie_sessions, opts.lie_turns, opts.seed))
    ended = time.time()
    data = None
    deadline = time.monotonic() + 10
    while data is None and time.monotonic() < deadline:
        time.sleep(0.5)
        data = read_stats(stats, ended)
    if data is None:
        out.notes.append("lies: no stats file after the phase")
    else:
        lies.discounted = {str(t): int(n) for t, n in data["tenant_hints_discounted"].items()}
    out.lies_turns = f"{lies.turns_completed}/{lies.turns_sent}"
    out.lies_discounted = ", ".join(f"{t} {lies.discounted.get(t, 0)}" for t in LIE_TENANTS)
    out.lies_engine_s = ", ".join(f"{t} {v:g}" for t, v in lies.engine_s.items())
    out.lies_ok = lies.ok
    if lies.note:
        out.notes.append(lies.note)


def _take_tally(out: EngineOutcome, tally: LoadTally) -> None:
    out.sent, out.completed, out.aborted = tally.sent, tally.completed, tally.aborted
    out.rejected_4xx, out.unexpected_4xx = tally.rejected, tally.unexpected_4xx
    out.vllm_500 = tally.vllm_500
    out.errors_5xx, out.transport_errors = tally.errors_5xx, tally.transport_errors
    out.stalls, out.max_latency_s = tally.stalls, round(tally.max_latency_s, 1)
    out.hints_expected = dict(tally.expected)
    out.notes += tally.first_failures
    if tally.accepted_but_invalid:
        out.notes.append(f"{tally.accepted_but_invalid} requests expected to get 400 were served")


def _take_stats(out: EngineOutcome, data: dict[str, Any] | None) -> None:
    if data is None:
        out.notes.append("the plug-in wrote no stats file after the load")
        return
    hints = data["hints"]
    out.hints_ok, out.hints_malformed = hints["ok"], hints["malformed"]
    out.hints_missing, out.reason_classes = hints["missing"], len(hints["reasons"])
    out.plugin_errors = int(data["errors"])
    out.pins_made = data["pins"]["pinned"]
    out.pins_active_idle = data["pins_active"]
    out.free_blocks_idle, out.usable_blocks = data["free_blocks"], data["usable_blocks"]
    if out.kv_free_after_s < 0:
        out.notes.append(
            f"KV not free when idle: {data['pins_active']} pins, "
            f"{data['free_blocks']}/{data['usable_blocks']} blocks free"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def print_engine_table(outcomes: list[EngineOutcome], opts: EngineOptions) -> None:
    print(
        f"{opts.requests:,} requests per policy at concurrency {opts.concurrency}, "
        f"{opts.abort_rate:.0%} aborted mid-stream, stall timeout {opts.stall_timeout:g} s, "
        f"ttl_max {opts.ttl_max:g} s, client_strategy {opts.client_strategy}; "
        f"starvation for {opts.starve_seconds:g} s"
    )
    rows = [(name, [_cell(getattr(o, name)) for o in outcomes]) for name in _ENGINE_FIELDS]
    rows.append(("ok", [str(o.ok) for o in outcomes]))
    width = max(len(name) for name, _ in rows)
    col = max(12, *(len(o.policy) for o in outcomes))
    print(" " * width + "".join(f"  {o.policy:>{col}}" for o in outcomes))
    for name, values in rows:
        print(f"{name:<{width}}" + "".join(f"  {v:>{col}}" for v in values))
    for o in outcomes:
        print(f"{o.policy}: starvation bound: {o.starve_bound}")
        for note in o.notes:
            print(f"{o.policy}: {note}")


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return "/".join(str(value.get(k, 0)) for k in ("ok", "malformed", "missing"))
    return str(value)


_ENGINE_FIELDS = (
    "sent",
    "completed",
    "aborted",
    "rejected_4xx",
    "vllm_500",
    "unexpected_4xx",
    "errors_5xx",
    "transport_errors",
    "stalls",
    "max_latency_s",
    "load_s",
    "hints_ok",
    "hints_malformed",
    "hints_missing",
    "hints_expected",
    "reason_classes",
    "plugin_errors",
    "pins_made",
    "pins_at_load_end",
    "kv_free_after_s",
    "pins_active_idle",
    "free_blocks_idle",
    "usable_blocks",
    "server_alive",
    "starve_latency_s",
    "starve_under_pressure",
    "starve_shorts",
    "lies_turns",
    "lies_discounted",
    "lies_engine_s",
    "lies_ok",
    "wall_s",
)


def engine_command(args: argparse.Namespace) -> int:
    from lamps_agent.policies import POLICIES

    policies = args.policies.split(",") if args.policies else POLICIES.names()
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; valid: {', '.join(POLICIES.names())}")
    with tempfile.TemporaryDirectory(prefix="chaos-engine-") as tmp:
        work = Path(args.log_dir) if args.log_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = args.model or str(_tiny_model(Path(tmp) / "model"))
        opts = EngineOptions(
            model=model, requests=args.requests, concurrency=args.concurrency,
            abort_rate=args.abort_rate, stall_timeout=args.stall_timeout,
            starve_seconds=args.starve_seconds, ttl_max=args.ttl_max,
            client_strategy=args.client_strategy, seed=args.seed,
            lie_sessions=args.lie_sessions, lie_turns=args.lie_turns,
        )  # fmt: skip
        outcomes = []
        for policy in policies:
            print(f"engine: {policy}", file=sys.stderr)
            outcomes.append(run_policy(policy, opts, work))
            if args.json:  # written as it goes: a long run is not lost to a late failure
                write_json(Path(args.json), outcomes)
    print_engine_table(outcomes, opts)
    return 0 if all(o.ok for o in outcomes) else 1


def _tiny_model(path: Path) -> Path:
    from adapters.vllm.tools.tiny_model import build_tiny_llama

    return build_tiny_llama(path)


def write_json(path: Path, outcomes: list[Any]) -> None:
    path.write_text(json.dumps([{**asdict(o), "ok": o.ok} for o in outcomes], indent=2))


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
    eng = sub.add_parser("engine", help="lamps-agent serve under fuzzed hints, for every policy")
    eng.add_argument("--policies", default=None, help="comma-separated (default: all)")
    eng.add_argument("--requests", type=int, default=10_000, help="per policy")
    eng.add_argument("--concurrency", type=int, default=32)
    eng.add_argument("--abort-rate", type=float, default=0.10)
    eng.add_argument("--stall-timeout", type=float, default=60.0, help="seconds per request")
    eng.add_argument("--starve-seconds", type=float, default=60.0)
    eng.add_argument("--ttl-max", type=float, default=10.0, help="the plug-in's pin TTL cap, s")
    eng.add_argument(
        "--client-strategy",
        choices=("obey", "advisory"),
        default="obey",
        help="the plug-in's client_strategy; obey: every preserve hint pins (default)",
    )
    eng.add_argument("--seed", type=int, default=0)
    eng.add_argument(
        "--lie-sessions", type=int, default=6,
        help="sessions per tenant in the lies phase (an honest tenant and three liars); 0: none",
    )  # fmt: skip
    eng.add_argument("--lie-turns", type=int, default=4, help="turns per session (>= 2)")
    eng.add_argument("--model", default=None, help="a model directory (default: a tiny one)")
    eng.add_argument("--log-dir", default=None, help="keep the servers' logs and stats here")
    eng.add_argument("--json", default=None, help="also write the outcome as JSON here")
    args = parser.parse_args(argv)
    if args.command == "engine":
        if args.requests < 1 or args.concurrency < 1 or not 0 <= args.abort_rate < 1:
            parser.error("--requests >= 1, --concurrency >= 1, 0 <= --abort-rate < 1")
        if args.lie_sessions < 0 or args.lie_turns < 2:
            parser.error("--lie-sessions >= 0, --lie-turns >= 2")
        return engine_command(args)
    if args.processes < 2 or args.threads < 1 or args.calls < 1:
        parser.error("--processes >= 2 (one is killed, one terminated), --threads >= 1")
    return registry_command(args)


if __name__ == "__main__":
    sys.exit(main())
