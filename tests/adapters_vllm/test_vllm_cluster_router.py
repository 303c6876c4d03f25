"""``Cluster`` with the real vllm-router in front of stand-in replicas (no vLLM): a few seconds.

Each stand-in is a small HTTP server that answers ``/health`` and ``/v1/chat/completions`` with
its own name, started where ``Cluster`` would start ``lamps-agent serve``.  Checked: the router
keeps a session on one replica by its ``X-Session-ID`` header and spreads new sessions; a killed
replica's sessions move to a live one at their next request (no error reaches the client) and stay
there; the supervisor reports a killed replica, kills the child it left behind (as vLLM's engine
processes), starts it again and the router sends new sessions to it, while the router stays ready;
``--status`` tells liveness from readiness; stopping the cluster leaves no process; bad options are
refused with one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm_router", reason="the cluster extra (vllm-router) is not installed")

from adapters.vllm.tools import cluster as cluster_module
from adapters.vllm.tools.cluster import (
    Cluster,
    ClusterError,
    ClusterOptions,
    cluster_status,
    group_members,
    read_manifest,
    router_command,
)
from adapters.vllm.tools.server import ServeOptions
from adapters.vllm.tools.supervisor import Backoff, Phase

STAND_IN = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, name = int(sys.argv[1]), sys.argv[2]
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def _send(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        message = {"role": "assistant", "content": name}
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
# a stand-in with a child in its process group, as vLLM's server has its engine processes
WITH_CHILD = (
    "import subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
) + STAND_IN


def _ports(n: int) -> int:
    import socket

    for base in range(30000 + os.getpid() % 500 * 20, 60000, 20):
        try:
            socks = [socket.create_server(("127.0.0.1", p)) for p in range(base, base + n)]
        except OSError:
            continue
        for s in socks:
            s.close()
        return base
    raise RuntimeError("no free ports")


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a stand-in where the cluster would start ``lamps-agent serve``."""

    def command(opts: ServeOptions, tools: Any = None) -> list[str]:
        return [sys.executable, "-c", STAND_IN, str(opts.port), f"replica@{opts.port}"]

    monkeypatch.setattr(cluster_module, "server_command", command)
    monkeypatch.setattr(cluster_module, "tool_setup", lambda opts: None)


@pytest.fixture
def running(stand_ins: None, tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path)


def _cluster(
    tmp_path: Path, log: Callable[[str], None] = lambda line: None, **kwargs: Any
) -> Iterator[Cluster]:
    base = _ports(4)
    opts = ClusterOptions(
        serve=ServeOptions(model="stand-in"),
        replicas=2,
        port=base,
        metrics_port=base + 1,
        replica_port=base + 2,
        log_dir=tmp_path / "logs",
        timeout=60,
        **kwargs,
    )
    cluster = Cluster(opts, log=log)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _ask(cluster: Cluster, session: str) -> str:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(
        f"{cluster.url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "X-Session-ID": session},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


def test_sessions_stick_and_move_once_when_their_replica_dies(running: Cluster) -> None:
    sessions = [f"s{i}" for i in range(6)]
    home = {s: _ask(running, s) for s in sessions}
    assert sorted(Counter(home.values()).values()) == [3, 3]  # new sessions: least loaded
    for _ in range(3):
        assert {s: _ask(running, s) for s in sessions} == home  # every turn on its replica

    manifest = read_manifest(running.opts.log_dir)
    victim = manifest["replicas"][1]
    os.killpg(victim["pid"], signal.SIGKILL)
    survivor = f"replica@{running.opts.replica_ports[0]}"
    after = {s: _ask(running, s) for s in sessions}  # no error: the router retried elsewhere
    assert set(after.values()) == {survivor}
    for s in sessions:
        if home[s] == survivor:
            assert after[s] == survivor
    assert {s: _ask(running, s) for s in sessions} == after  # moved once, then stays
    assert running.poll() == ["replica-1"]


def test_a_killed_replica_is_restarted_and_the_router_uses_it_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def command(opts: ServeOptions, tools: Any = None) -> list[str]:
        return [sys.executable, "-c", WITH_CHILD, str(opts.port), f"replica@{opts.port}"]

    monkeypatch.setattr(cluster_module, "server_command", command)
    monkeypatch.setattr(cluster_module, "tool_setup", lambda opts: None)
    lines: list[str] = []
    for cluster in _cluster(tmp_path, backoff=Backoff(first_s=0.5), log=lines.append):
        before = {s: _ask(cluster, s) for s in ("a", "b")}
        assert len(set(before.values())) == 2
        victim = cluster.replicas[1].proc.pid
        time.sleep(0.5)  # the stand-in has started its child
        assert len(group_members(victim)) == 2
        os.kill(victim, signal.SIGKILL)  # the server alone, as a crash: its child lives on
        assert _ask(cluster, "b") == f"replica@{cluster.opts.replica_ports[0]}"  # moved
        assert _ready(cluster)
        deadline = time.monotonic() + 30
        slot = cluster.supervisor.slots[1]  # type: ignore[union-attr]
        while slot.num_restarts == 0 or slot.phase is not Phase.SERVING:
            assert time.monotonic() < deadline, lines
            cluster.supervise()
            time.sleep(0.2)
        died = [line for line in lines if line.startswith("replica-1: died")]
        assert died == [
            f"replica-1: died (killed by SIGKILL), log {cluster.opts.log_dir}/replica-1.log; "
            "1 process of its group killed; restart 1 in 0.5 s"
        ]
        assert group_members(victim) == []  # no orphan
        assert lines[-1].startswith("replica-1: serving again (restart 1")
        assert read_manifest(cluster.opts.log_dir)["replicas"][1]["restarts"] == 1
        # the router learns it by its health check: a new session goes to the emptier replica
        deadline = time.monotonic() + 20
        while (
            _ask(cluster, f"new-{time.monotonic()}") != f"replica@{cluster.opts.replica_ports[1]}"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        status = cluster_status(cluster.opts.log_dir)
        assert status.alive and status.ready and all(s for _, _, s in status.replicas)


def test_status_tells_liveness_from_readiness(
    running: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamps_agent.cli.main import main

    argv = ["cluster", "--status", "--log-dir", str(running.opts.log_dir)]
    assert main(argv) == 0
    assert f"router {running.url}: alive, ready" in capsys.readouterr().out
    for member in running.replicas:
        os.killpg(member.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _ready(running):  # the router's health check notices within ~4 s
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = cluster_status(running.opts.log_dir)
    assert status.alive and not status.ready
    assert "alive, not ready" in status.text() and "replica-0" in status.text()
    assert main(argv) == 1
    assert "replica-1 http://127.0.0.1:" in capsys.readouterr().out


def _ready(cluster: Cluster) -> bool:
    try:
        with urllib.request.urlopen(f"{cluster.url}/readiness", timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def test_stop_leaves_no_process(running: Cluster) -> None:
    pids = [m.proc.pid for m in (*running.replicas, running.router) if m is not None]
    running.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_a_replica_that_cannot_start_stops_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def command(opts: ServeOptions, tools: Any = None) -> list[str]:
        if opts.port % 2:
            return [sys.executable, "-c", "import sys; print('no model'); sys.exit(3)"]
        return [sys.executable, "-c", STAND_IN, str(opts.port), "ok"]

    monkeypatch.setattr(cluster_module, "server_command", command)
    monkeypatch.setattr(cluster_module, "tool_setup", lambda opts: None)
    base = _ports(4)
    opts = ClusterOptions(
        serve=ServeOptions(model="stand-in"), port=base, metrics_port=base + 1,
        replica_port=base + 2, log_dir=tmp_path, timeout=60,
    )  # fmt: skip
    cluster = Cluster(opts, log=lambda line: None)
    with pytest.raises(ClusterError, match=r"(?s)replica-1 exited with 3.*no model"):
        cluster.start()
    assert cluster.replicas == [] and cluster.router is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"router_policy": "round_robin"}, "router policy must be one of"),
        ({"port": 8100}, "ports must be distinct"),
        ({"reserved_cpus": -1}, "reserved CPUs"),
        ({"gpus_per_replica": -1}, "GPUs per replica"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClusterOptions(serve=ServeOptions(model="m"), **kwargs)


def test_router_command_keeps_the_users_flags() -> None:
    opts = ClusterOptions(
        serve=ServeOptions(model="m"),
        router_args=("--cb-failure-threshold=5", "--log-level", "debug"),
    )
    cmd = router_command(opts, ["http://a:1", "http://b:2"])
    assert cmd[cmd.index("--policy") + 1] == "sticky_least_loaded"
    assert cmd[cmd.index("--worker-urls") + 1 : cmd.index("--worker-urls") + 3] == [
        "http://a:1",
        "http://b:2",
    ]
    assert "--cb-failure-threshold" not in cmd  # the user's value replaces the default
    assert cmd[-3:] == ["--cb-failure-threshold=5", "--log-level", "debug"]
    assert cmd[cmd.index("--health-check-interval-secs") + 1] == "2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/no/such/model"], "no model folder at '/no/such/model'"),
        (["--model", "m", "--replicas", "0"], "replicas must be at least 1"),
        (["--status"], "no cluster.json in"),
        ([], "the following argument is required: --model (unless --status)"),
    ],
)
def test_cluster_command_refuses_bad_input_in_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamps_agent.cli.main import main

    assert main(["cluster", "--log-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamps-agent: error: ") and message in err[-1]
    assert not (tmp_path / "cluster.json").exists()
