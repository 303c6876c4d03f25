"""End to end: LangChain agents with ``LampsMiddleware`` and ``ChatOpenAI`` against ``lamps-agent
serve`` (CPU engine, the tiny local model, started here as a subprocess).

A random-weight model never chooses a tool by itself, so a driver middleware asks for one with
``tool_choice="required"`` (vLLM's guided decoding writes the call) for the first turns and for a
plain answer (``"none"``) at the end.  Four conversations run at once.  The server obeys the
client's KV strategy (``LAMPS_CLIENT_STRATEGY=obey``; by default the scheduler decides at its live
load and the hint is advice) and the middleware asks to preserve, so the test knows what each
paused turn gets.  Checked: the hints reached the scheduler, every paused turn got its strategy
applied (a pin) and the next turn of the conversation found that prefix in the cache, and every
tool call is in the registry with its duration.  The three example apps then run against the same
server with one command.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.langchain, pytest.mark.slow]
pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytest.importorskip("langchain", reason="the langchain extra is not installed")
pytest.importorskip("langchain_openai", reason="the langchain extra is not installed")

from langchain_core.tools import tool  # noqa: E402

from adapters.langchain import LampsMiddleware  # noqa: E402
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
from tool_registry import ToolRegistry  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Server:
    url: str
    model: str
    stats: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``lamps-agent serve`` exactly as docs/vllm.md shows it, one per module."""
    folder = tmp_path_factory.mktemp("served")
    port = _free_port()
    stats, log = folder / "stats.json", folder / "server.log"
    cmd = [
        sys.executable, "-m", "lamps_agent.cli.main", "serve", "--model", str(tiny_model),
        "--policy", "lamps", "--port", str(port), "--", *ENGINE_ARGS,
    ]  # fmt: skip
    env = {
        **os.environ,
        "LAMPS_STATS_FILE": str(stats),
        "LAMPS_CLIENT_STRATEGY": "obey",
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"lamps-agent serve exited with {proc.returncode}: {log.read_text()[-3000:]}"
                )
            try:
                _get(f"http://127.0.0.1:{port}/health")
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready in 300 s: {log.read_text()[-3000:]}")
                time.sleep(1.0)
        yield Server(url=f"http://127.0.0.1:{port}", model=str(tiny_model), stats=stats, log=log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@tool
def lookup(key: Literal["alpha", "beta", "gamma"]) -> str:
    """Look a key up in the catalogue."""
    time.sleep(TOOL_SECONDS)
    return f"the catalogue entry for {key} lists three items"


@tool
def convert(unit: Literal["metres", "feet"]) -> str:
    """Convert the last measurement to a unit."""
    time.sleep(2 * TOOL_SECONDS)
    return f"the measurement is 12 {unit}"


def test_langchain_agents_call_tools_on_the_served_engine(server: Server, tmp_path: Path) -> None:
    registry = ToolRegistry(f"sqlite:///{tmp_path}/registry.db", spill_dir=tmp_path)
    registry.register(lookup, duration_hint=TOOL_SECONDS)
    registry.register(convert, duration_hint=2 * TOOL_SECONDS)
    lamps = LampsMiddleware(
        registry=registry,
        agent="e2e",
        strategy=lambda **_: KVStrategy.PRESERVE,  # obeyed: every paused turn is pinned
    )
    agent = catalogue_agent(server.url, server.model, [lookup, convert], lamps)
    # One conversation first: the middleware learns online, so only from the second conversation
    # on does it predict the tool call that ends each turn (and hint the strategy for it).  Its
    # last turn is then mispredicted as a tool call too; that pin lapses by TTL before the
    # baseline is read.
    threads = [f"conversation-{i}" for i in range(CONVERSATIONS)]

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        await run_conversations(agent, ["warm-up"])
        await asyncio.sleep(1.5 * 2 * TOOL_SECONDS + 1.5)  # the warm-up's last pin lapses
        baseline = await asyncio.to_thread(stats_after, server.stats)
        return baseline, await run_conversations(agent, threads)

    baseline, states = asyncio.run(scenario())  # one loop: ChatOpenAI's client is bound to it
    assert baseline["pins_active"] == 0
    registry.flush()
    stats = stats_after(server.stats)
    calls = list(registry.iter_calls())
    registry.close()

    for thread, state in zip(threads, states, strict=True):
        answers = replies(state)
        # each turn after a tool call found the previous turn's whole prompt in the cache
        for before, after in itertools.pairwise(answers):
            kept = before.usage_metadata["input_tokens"] // BLOCK * BLOCK
            cached = after.usage_metadata["input_token_details"]["cache_read"]
            assert cached >= kept, (thread, cached, kept)
        # every tool call of the conversation is in the registry, with its duration
        mine = [c for c in calls if c.session_id == thread]
        names = sorted(r.tool_calls[0]["name"] for r in answers[:TOOL_TURNS])
        assert sorted(c.tool for c in mine) == names
        for call in mine:
            floor = TOOL_SECONDS if call.tool == "lookup" else 2 * TOOL_SECONDS
            assert floor <= call.duration < floor + 5

    paused = CONVERSATIONS * TOOL_TURNS
    assert stats["policy"] == "lamps" and stats["errors"] == 0
    hints = _delta(stats["hints"], baseline["hints"])
    assert hints["ok"] == CONVERSATIONS * (TOOL_TURNS + 1)  # every model call's hints arrived
    assert hints["malformed"] == 0
    decisions = _delta(stats["decisions"], baseline["decisions"])
    assert decisions["preserve"] == decisions["advised_followed"] == paused, decisions
    assert decisions["swap"] == decisions["discard"] == 0, decisions
    pins = _delta(stats["pins"], baseline["pins"])
    assert pins["pinned"] == paused  # the strategy applied at every turn that ended in a tool call
    # a pin is released when the conversation's next turn is admitted on top of it, or when the
    # agent stays away longer than its TTL (1.5 x the predicted tool time + 1 s; a loaded 2-core
    # machine can be that slow); never lost, never taken back under memory pressure here
    released = pins["released"]
    assert released.get("admitted", 0) + released.get("ttl", 0) == paused, released
    assert released.get("admitted", 0) >= paused // 2, released
    assert stats["pins_active"] == 0
    assert stats["prefill_cached_tokens"] > baseline["prefill_cached_tokens"]


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` for counters, nested dicts included."""
    return {
        key: _delta(value, before.get(key, {}))
        if isinstance(value, dict)
        else value - before.get(key, 0)
        for key, value in after.items()
    }


def test_example_apps_run_against_the_served_engine(server: Server, tmp_path: Path) -> None:
    """The documented command: ``lamps-agent examples --base-url URL`` (model asked of the server,
    replies capped by --max-tokens, tasks by --max-turns)."""
    cmd = [
        sys.executable, "-m", "lamps_agent.cli.main", "examples", "--base-url",
        f"{server.url}/v1", "--limit", "1", "--max-tokens", "24", "--max-turns", "3",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for app in ("math", "qa", "slow"):
        assert f"=== {app}:" in done.stdout
    assert done.stdout.count("tool statistics (from the tool registry):") == 3
