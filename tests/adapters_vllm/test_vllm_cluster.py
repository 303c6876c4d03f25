"""Two ``lamps-agent serve`` replicas behind vllm-router (``lamps-agent cluster``), LangChain
agents with ``LampsMiddleware`` on the router, one replica killed mid-run.

The cluster is started exactly as docs/vllm.md ("Many replicas") shows it, as a subprocess, with
vLLM's request log on (each replica logs every request it receives with its ``extra_args``, where
the middleware's hints carry the session id and the step), statistics files per replica, and the
client's KV strategy obeyed (``LAMPS_CLIENT_STRATEGY=obey``; the middleware asks to preserve).
After a warm-up conversation (the middleware learns which turns end in a tool call), four
conversations run at once.  Every conversation's second tool call waits at a barrier; when all four
are there, replica 1 is killed (SIGKILL to its process group, as a crashed machine), then the
tools return.  Checked, from the replicas' own logs and statistics: every turn of a session
reached its home replica while it lived; both replicas were home to sessions; the sessions of the
dead replica moved to the survivor and finished (none lost); each turn after a tool call on the
same replica found the previous prompt in its prefix cache and the survivor resumed pinned
sessions.  Cluster stop leaves no process behind.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.langchain, pytest.mark.slow]
pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytest.importorskip("vllm_router", reason="the cluster extra (vllm-router) is not installed")
pytest.importorskip("langchain", reason="the langchain extra is not installed")
pytest.importorskip("langchain_openai", reason="the langchain extra is not installed")

from langchain_core.runnables import RunnableConfig  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from adapters.langchain import LampsMiddleware  # noqa: E402
from adapters.vllm.tools.cluster import group_members  # noqa: E402
from lamps_agent.request import KVStrategy  # noqa: E402
from tests.adapters_vllm.agents import (  # noqa: E402
    CONVERSATIONS,
    ENGINE_ARGS,
    TOOL_SECONDS,
    TOOL_TURNS,
    catalogue_agent,
    replies,
    run_conversations,
    stats_after,
)
from tests.adapters_vllm.conftest import BLOCK  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KILL_AT_CALL = 2  # each conversation's second tool call waits for the kill
_REQUEST = re.compile(r"Received request (\S+): params: .*extra_args=(\{.*?\})\), lora_request")


@dataclass(frozen=True)
class Running:
    url: str
    model: str
    log_dir: Path
    manifest: dict[str, Any]
    proc: subprocess.Popen[bytes]


def _port_block(n: int) -> int:
    """The first of ``n`` consecutive free ports (the cluster takes port, port + 1, ...)."""
    import socket

    for base in range(20000 + os.getpid() % 1000 * 20, 60000, 20):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.fixture(scope="module")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    log_dir = tmp_path_factory.mktemp("cluster")
    base = _port_block(4)
    cmd = [
        sys.executable, "-m", "lamps_agent.cli.main", "cluster", "--model", str(tiny_model),
        "--replicas", "2", "--port", str(base), "--metrics-port", str(base + 1),
        "--replica-port", str(base + 2), "--log-dir", str(log_dir), "--",
        *ENGINE_ARGS, "--enable-log-requests",
    ]  # fmt: skip
    env = {**os.environ, "LAMPS_CLIENT_STRATEGY": "obey", "PYTHONPATH": str(ROOT)}
    out = (log_dir / "launcher.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{base}"
    try:
        deadline = time.monotonic() + 600
        while not ((log_dir / "cluster.json").exists() and _healthy(url)):
            if proc.poll() is not None:
                pytest.fail(f"cluster exited with {proc.returncode}: {_text(log_dir)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"cluster not ready in 600 s: {_text(log_dir)[-3000:]}")
            time.sleep(1.0)
        manifest = json.loads((log_dir / "cluster.json").read_text())
        yield Running(url=url, model=str(tiny_model), log_dir=log_dir, manifest=manifest, proc=proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the launcher stops the router and the replicas
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _text(log_dir: Path) -> str:
    return (log_dir / "launcher.log").read_text(errors="replace")


class KillSwitch:
    """Holds each measured conversation's ``KILL_AT_CALL``-th tool call until all are there,
    then kills one replica (SIGKILL to its process group) and lets them go on."""

    def __init__(self, threads: list[str], pid: int) -> None:
        self.threads = set(threads)
        self.calls: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(len(threads), action=lambda: _kill_group(pid))

    def visit(self, thread: str) -> None:
        with self.lock:
            self.calls[thread] += 1
            n = self.calls[thread]
        if thread in self.threads and n == KILL_AT_CALL:
            self.barrier.wait(timeout=300)


def _kill_group(pid: int) -> None:
    os.killpg(pid, signal.SIGKILL)


def _requests(log: Path) -> list[dict[str, Any]]:
    """The hinted requests a replica received, from vLLM's request log, in order."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = _REQUEST.search(line)
        if match:
            xargs = ast.literal_eval(match.group(2))
            if isinstance(xargs, dict) and "lamps_session_id" in xargs:
                found.append(xargs)
    return found


def test_sessions_stay_on_their_replica_and_survive_a_dead_one(
    cluster: Running, tmp_path: Path
) -> None:
    replicas = cluster.manifest["replicas"]
    victim = replicas[1]
    threads = [f"conversation-{i}" for i in range(CONVERSATIONS)]
    switch = KillSwitch(threads, victim["pid"])

    @tool
    def lookup(key: Literal["alpha", "beta", "gamma"], config: RunnableConfig) -> str:
        """Look a key up in the catalogue."""
        switch.visit(str(config.get("configurable", {}).get("thread_id")))
        time.sleep(TOOL_SECONDS)
        return f"the catalogue entry for {key} lists three items"

    lamps = LampsMiddleware(agent="cluster", strategy=lambda **_: KVStrategy.PRESERVE)
    # no retries: a turn the router cannot place fails the conversation
    agent = catalogue_agent(cluster.url, cluster.model, [lookup], lamps)

    async def scenario() -> list[dict[str, Any]]:
        await run_conversations(agent, ["warm-up"])  # the middleware learns which turns call a tool
        return await run_conversations(agent, threads)

    states = asyncio.run(scenario())

    # no session lost: every conversation finished all its turns through the router
    answers = [replies(state) for state in states]

    # where each turn ran, from the replicas' own request logs: (session, step) -> replica
    landed: dict[str, dict[int, int]] = defaultdict(dict)
    for index, replica in enumerate(replicas):
        for xargs in _requests(Path(replica["log"])):
            sid, step = xargs["lamps_session_id"], xargs["lamps_step"]
            assert step not in landed[sid], (sid, step, "ran twice")
            landed[sid][step] = index
    homes = {}
    for sid in threads:
        steps = landed[sid]
        assert sorted(steps) == list(range(TOOL_TURNS + 1)), (sid, steps)
        home = steps[0]
        homes[sid] = home
        before_kill = [steps[s] for s in range(KILL_AT_CALL)]
        after_kill = [steps[s] for s in range(KILL_AT_CALL, TOOL_TURNS + 1)]
        assert before_kill == [home] * KILL_AT_CALL, (sid, steps)  # affinity while home lived
        assert after_kill == [0] * len(after_kill), (sid, steps)  # survivor (or home) after
    assert set(homes.values()) == {0, 1}, homes  # both replicas were home to sessions

    # prefix reuse where a turn followed its previous one on the same replica
    reused = 0
    for sid, mine in zip(threads, answers, strict=True):
        for step, (before, after) in enumerate(itertools.pairwise(mine), start=1):
            if landed[sid][step] != landed[sid][step - 1]:
                continue  # moved to the survivor: a cold prefill there
            kept = before.usage_metadata["input_tokens"] // BLOCK * BLOCK
            cached = after.usage_metadata["input_token_details"]["cache_read"]
            assert cached >= kept, (sid, step, cached, kept)
            reused += 1
    moved = sum(1 for sid in threads if homes[sid] == 1)
    assert reused == CONVERSATIONS * TOOL_TURNS - moved

    # the survivor pinned the paused turns it served and resumed them (released on admission)
    stats = stats_after(Path(replicas[0]["stats"]))
    assert stats["errors"] == 0
    assert stats["pins"]["pinned"] >= 1
    assert stats["pins"]["released"].get("admitted", 0) >= 1
    assert stats["prefill_cached_tokens"] > 0
    assert cluster.proc.poll() is None  # the launcher keeps running without the dead replica


def test_stopping_the_cluster_leaves_no_process(cluster: Running) -> None:
    pids = [cluster.manifest["router"]["pid"], *(r["pid"] for r in cluster.manifest["replicas"])]
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(timeout=90) == 0
    for pid in pids:
        assert group_members(pid) == []  # no live process of the group (server, engine) is left
    # A killed orphan is PID 1's to reap: the group itself is gone once it has (a replica killed
    # by an earlier test left its engine processes to PID 1).
    deadline = time.monotonic() + 20
    for pid in pids:
        while True:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"process group {pid} is still there"
            time.sleep(0.1)
