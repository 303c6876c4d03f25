"""Many ``lamps-agent serve`` replicas behind vLLM's router, on one machine, as one command.

:class:`Cluster` starts ``replicas`` vLLM servers with the plug-in (each on its own port, with its
own log and statistics file, all with the same CPU layout), waits until every one answers
``/health``, then starts ``vllm-router`` (PyPI ``vllm-router``, the ``cluster`` extra) in front of
them and waits for it too.  Every process runs in its own process group (vLLM's servers start
engine processes of their own), so :meth:`Cluster.stop` ends each whole group: SIGINT, then
SIGKILL after a grace period.  A child also gets SIGTERM if this process dies without stopping
them (Linux ``PR_SET_PDEATHSIG``), so a killed launcher leaves no orphan behind.

While it runs, :meth:`Cluster.supervise` watches the replicas (``supervisor.Supervisor``): a replica
whose server exits is reported in one line, its process group is killed, and it is started again
on its port after a back-off (``restart=False``: left dead).  On the CPU build each replica's
engine gets cores of its own (``cpu_layout.split_cores``, passed as ``VLLM_CPU_OMP_THREADS_BIND``).

The router is set up for agent sessions (docs/vllm.md, "Many replicas"): ``sticky_least_loaded``
places a new session on the replica with the fewest sessions and keeps every later turn with the
same ``X-Session-ID`` (the header ``LampsMiddleware`` sends) on that replica.  When a replica dies
the router's circuit breaker opens after two failed attempts and the retry places the session on a
live replica, where it stays; the pins it held on the dead replica died with it, and a session
that moves away from a live replica leaves pins there that expire by their TTL.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adapters.vllm.tools.cpu_layout import CpuLayout, machine_cores, split_cores
from adapters.vllm.tools.server import ServeOptions, server_command, server_env, tool_setup
from adapters.vllm.tools.supervisor import Backoff, Process, Supervisor

log = logging.getLogger(__name__)

ROUTER_POLICIES = ("sticky_least_loaded", "consistent_hash")
# Router settings that make a dead replica's sessions move within seconds (its defaults: a health
# check a minute, and a circuit breaker that opens after 10 failures, longer than the 5 retries).
ROUTER_DEFAULTS: tuple[tuple[str, str], ...] = (
    ("--health-check-interval-secs", "2"),
    ("--health-failure-threshold", "2"),
    ("--health-success-threshold", "1"),
    ("--cb-failure-threshold", "2"),
    ("--cb-success-threshold", "1"),
    ("--cb-timeout-duration-secs", "10"),
    ("--retry-max-retries", "5"),
    ("--retry-initial-backoff-ms", "100"),
)
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A replica or the router did not start (the message names its log)."""


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """What to start: ``replicas`` servers like ``serve`` (its port is ignored), the router.

    Replica ``i`` listens on ``replica_port + i``; the router on ``port`` (its Prometheus
    metrics on ``metrics_port``).  ``reserved_cpus`` sets ``VLLM_CPU_NUM_OF_RESERVED_CPU`` for
    every replica (the CPU build; one layout for all of them), ``gpus_per_replica`` gives replica
    ``i`` its own ``CUDA_VISIBLE_DEVICES`` slice (GPU machines; 0 leaves the variable alone).
    Without GPUs, ``bind_cores`` gives each replica's engine its own cores (``cores``: the ones to
    split, default this process's affinity).  ``restart`` and ``backoff``: what the supervisor
    does with a replica that dies.
    """

    serve: ServeOptions
    replicas: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 8001
    replica_port: int = 8100
    router_policy: str = "sticky_least_loaded"
    router_args: Sequence[str] = field(default_factory=tuple)
    log_dir: Path = Path("cluster-logs")
    reserved_cpus: int | None = None
    gpus_per_replica: int = 0
    bind_cores: bool = True
    cores: Sequence[int] | None = None
    restart: bool = True
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if self.router_policy not in ROUTER_POLICIES:
            raise ValueError(
                f"router policy must be one of {', '.join(ROUTER_POLICIES)}, "
                f"got {self.router_policy!r}"
            )
        ports = [self.port, self.metrics_port, *self.replica_ports]
        if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"ports must be distinct and in 1..65535, got {ports}")
        if self.reserved_cpus is not None and self.reserved_cpus < 0:
            raise ValueError(f"reserved CPUs must be >= 0, got {self.reserved_cpus}")
        if self.gpus_per_replica < 0:
            raise ValueError(f"GPUs per replica must be >= 0, got {self.gpus_per_replica}")

    @property
    def replica_ports(self) -> list[int]:
        return [self.replica_port + i for i in range(self.replicas)]


@dataclass(slots=True)
class Member:
    """One started process: a replica or the router."""

    name: str
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    stats: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "pid": self.proc.pid,
            "log": str(self.log),
            "stats": str(self.stats) if self.stats else None,
        }


def router_command(opts: ClusterOptions, worker_urls: Sequence[str]) -> list[str]:
    """``vllm-router``'s argument list (its module, so the interpreter's own copy runs); the
    user's ``router_args`` replace any default they name."""
    given = {a.split("=", 1)[0] for a in opts.router_args if a.startswith("--")}
    cmd = [
        sys.executable, "-m", "vllm_router.launch_router",
        "--worker-urls", *worker_urls, "--policy", opts.router_policy,
        "--host", opts.host, "--port", str(opts.port),
        "--prometheus-host", opts.host, "--prometheus-port", str(opts.metrics_port),
    ]  # fmt: skip
    for flag, value in ROUTER_DEFAULTS:
        if flag not in given:
            cmd += [flag, value]
    return [*cmd, *opts.router_args]


def cpu_layout(opts: ClusterOptions) -> CpuLayout | None:
    """Each replica's cores (None: a GPU machine, binding turned off, or the user's own
    ``VLLM_CPU_OMP_THREADS_BIND`` in the environment, which every replica then gets)."""
    if opts.gpus_per_replica or not opts.bind_cores or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return None
    cores = list(opts.cores) if opts.cores is not None else machine_cores()
    return split_cores(cores, opts.replicas, opts.reserved_cpus or 0)


def replica_env(
    opts: ClusterOptions, index: int, serve: ServeOptions, layout: CpuLayout | None = None
) -> dict[str, str]:
    env = server_env(serve)
    if opts.reserved_cpus is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(opts.reserved_cpus)
    if layout is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = layout.bind(index)
    if opts.gpus_per_replica:
        first = index * opts.gpus_per_replica
        devices = range(first, first + opts.gpus_per_replica)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    return env


class Cluster:
    """The replicas and the router for the duration of a ``with`` block (or start / stop)."""

    def __init__(self, opts: ClusterOptions, *, log: Callable[[str], None] | None = None) -> None:
        self.opts = opts
        self.replicas: list[Member] = []
        self.router: Member | None = None
        self.supervisor: Supervisor | None = None
        self.layout: CpuLayout | None = None
        self._tools: Any = None
        self._say = log or (lambda line: print(line, file=sys.stderr))

    @property
    def url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.port}"

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every replica, wait for them, then the router; on any failure stop all."""
        if importlib.util.find_spec("vllm_router") is None:
            raise ClusterError(
                "vllm-router is not installed: pip install 'lamps-agent[cluster]' "
                "(or pip install vllm-router==0.1.17)"
            )
        self.opts.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._tools = tool_setup(self.opts.serve)  # one check, before any process starts
            self.layout = cpu_layout(self.opts)
            if self.layout is not None:
                self._say(f"CPU layout: {self.layout.text()}")
                if self.layout.note:
                    self._say(f"CPU layout: {self.layout.note}")
            for i in range(self.opts.replicas):
                self.replicas.append(self._start_replica(i))
            self._wait_healthy(self.replicas)
            urls = [m.url for m in self.replicas]
            self.router = self._spawn(
                "router", self.url, router_command(self.opts, urls), dict(os.environ)
            )
            self._wait_healthy([self.router])
        except BaseException:
            self.stop()
            raise
        self.supervisor = Supervisor(
            self.replicas, respawn=self._restart_replica, serves=_healthy,
            kill_group=kill_group, say=self._say, restart=self.opts.restart,
            backoff=self.opts.backoff, start_timeout_s=self.opts.timeout,
        )  # fmt: skip
        self._write_manifest()

    def supervise(self) -> None:
        """One look at the replicas (call it every second): report, kill and restart the dead."""
        if self.supervisor is not None and self.supervisor.check():
            self._write_manifest()

    def _start_replica(self, index: int, *, restart: int = 0) -> Member:
        port = self.opts.replica_ports[index]
        # a replacement's statistics start from zero: a file of its own keeps the dead one's
        suffix = f".restart-{restart}" if restart else ""
        stats = self.opts.log_dir / f"replica-{index}{suffix}.stats.json"
        serve = replace(self.opts.serve, host=self.opts.host, port=port, stats_file=str(stats))
        url = f"http://{self.opts.host}:{port}"
        cmd = server_command(serve, self._tools)
        env = replica_env(self.opts, index, serve, self.layout)
        member = self._spawn(f"replica-{index}", url, cmd, env, append=restart > 0)
        member.stats = stats
        return member

    def _restart_replica(self, index: int) -> Member:
        restart = self.supervisor.slots[index].num_restarts + 1 if self.supervisor else 1
        member = self._start_replica(index, restart=restart)
        self.replicas[index] = member
        return member

    def _spawn(
        self, name: str, url: str, cmd: list[str], env: dict[str, str], *, append: bool = False
    ) -> Member:
        log = self.opts.log_dir / f"{name}.log"
        with log.open("ab" if append else "wb") as out:
            if append:  # a restarted replica continues its log
                out.write(f"\n--- lamps-agent cluster: {name} started again ---\n".encode())
                out.flush()
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._say(f"{name}: pid {proc.pid}, {url}, log {log}")
        return Member(name=name, url=url, log=log, proc=proc)

    def _wait_healthy(self, members: Sequence[Member]) -> None:
        deadline = time.monotonic() + self.opts.timeout
        waiting = list(members)
        while waiting:
            for member in list(waiting):
                code = member.proc.poll()
                if code is not None:
                    raise ClusterError(
                        f"{member.name} exited with {code} while starting:\n"
                        f"{_tail(member.log)}\n(log: {member.log})"
                    )
                if _healthy(member.url):
                    waiting.remove(member)
                    self._say(f"{member.name}: ready")
            if waiting and time.monotonic() > deadline:
                names = ", ".join(m.name for m in waiting)
                raise ClusterError(f"{names} not ready after {self.opts.timeout:.0f} s")
            if waiting:
                time.sleep(1.0)

    def _write_manifest(self) -> None:
        """``cluster.json`` in the log folder: every process's url, pid, log and stats file."""
        replicas = [m.describe() for m in self.replicas]
        for i, entry in enumerate(replicas):
            if self.layout is not None:
                entry["cores"] = self.layout.bind(i)
            if self.supervisor is not None:
                slot = self.supervisor.slots[i]
                entry.update(phase=slot.phase.value, restarts=slot.num_restarts)
        manifest = {
            "router": self.router.describe() if self.router else None,
            "router_policy": self.opts.router_policy,
            "replicas": replicas,
        }
        (self.opts.log_dir / "cluster.json").write_text(json.dumps(manifest, indent=2))

    def poll(self) -> list[str]:
        """Names of the members that have exited (a dead replica is the router's business)."""
        members = [*self.replicas, *([self.router] if self.router else [])]
        return [m.name for m in members if m.proc.poll() is not None]

    def router_alive(self) -> bool:
        return self.router is not None and self.router.proc.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        """End every process group: the router first (no new turns), then the replicas."""
        members = [*([self.router] if self.router else []), *self.replicas]
        for member in members:
            _signal_group(member.proc, signal.SIGINT)
        deadline = time.monotonic() + grace
        for member in members:
            try:
                member.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(member.proc, signal.SIGKILL)
                member.proc.wait()
            # the server's own children (engine processes) may outlive its main process
            _signal_group(member.proc, signal.SIGKILL)
        for member in members:
            _wait_group_gone(member.proc, timeout=10.0)
        self.router, self.replicas, self.supervisor = None, [], None


def _signal_group(proc: Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # else the whole group is gone
        os.killpg(proc.pid, sig)  # the group's id is the leader's pid (start_new_session)


def kill_group(proc: Process, *, timeout: float = 5.0) -> int:
    """SIGKILL to the whole process group led by ``proc`` (its leader already exited) and wait
    until it is gone; the number of processes it still had (vLLM's engine core, worker, resource
    tracker: re-parented to PID 1 when the server died)."""
    num_left = len(group_members(proc.pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _wait_group_gone(proc, timeout=timeout)
    return num_left


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc (Linux; [] elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def _wait_group_gone(proc: Process, *, timeout: float) -> None:
    """Until no process of the group is left (a killed engine process takes a moment to be
    reaped), so that a stopped cluster has really stopped when ``stop`` returns.  Zombies do not
    count: a killed orphan is PID 1's to reap."""
    deadline = time.monotonic() + timeout
    on_linux = Path("/proc/self/stat").exists()
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        if on_linux and not group_members(proc.pid):
            return
        time.sleep(0.05)
    log.warning("process group %d still has members %.0f s after SIGKILL", proc.pid, timeout)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the launcher dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _healthy(url: str) -> bool:
    return _answers(f"{url}/health")


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 within 2 s."""
    return http_status(url) == 200


def http_status(url: str, *, timeout: float = 2.0) -> int:
    """The HTTP status ``url`` answers within ``timeout`` seconds; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - chars))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def read_manifest(log_dir: Path) -> dict[str, Any]:
    """The ``cluster.json`` a running cluster wrote (tests and operators read pids from it)."""
    data: dict[str, Any] = json.loads((log_dir / "cluster.json").read_text())
    return data


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterStatus:
    """Health with its two meanings: ``alive`` (the router process answers, vllm-router's
    ``/liveness``) and ``ready`` (it can serve: at least one healthy replica, ``/readiness``)."""

    router: str
    alive: bool
    ready: bool
    replicas: tuple[tuple[str, str, bool], ...]  # name, url, answers /health

    def text(self) -> str:
        lines = [
            f"router {self.router}: {'alive' if self.alive else 'not answering'}, "
            f"{'ready' if self.ready else 'not ready'}"
        ]
        for name, url, serves in self.replicas:
            lines.append(f"{name} {url}: {'serving' if serves else 'not serving'}")
        return "\n".join(lines)


def cluster_status(log_dir: Path) -> ClusterStatus:
    """Probe the router and the replicas of the cluster whose ``cluster.json`` is in ``log_dir``."""
    try:
        manifest = read_manifest(log_dir)
    except FileNotFoundError:
        raise ValueError(f"no cluster.json in {log_dir}: no cluster was started there") from None
    router = str((manifest.get("router") or {}).get("url", ""))
    replicas = tuple(
        (str(r["name"]), str(r["url"]), _healthy(str(r["url"])))
        for r in manifest.get("replicas", [])
    )
    return ClusterStatus(
        router=router,
        alive=bool(router) and _answers(f"{router}/liveness"),
        ready=bool(router) and _answers(f"{router}/readiness"),
        replicas=replicas,
    )


__all__ = [
    "ROUTER_POLICIES",
    "Cluster",
    "ClusterError",
    "ClusterOptions",
    "ClusterStatus",
    "Member",
    "cluster_status",
    "cpu_layout",
    "group_members",
    "kill_group",
    "read_manifest",
    "router_command",
]
