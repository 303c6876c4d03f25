"""Served policies (`lamps-agent serve --policy NAME`) complete a replay of 40 agent programs: no
request lost, no plug-in error, and every KV block free again afterwards.

A server start costs ~40 s, so the served run covers one policy per way a policy can drive the
plug-in — its capability flags (revisits pins, holds running requests, gates admission, prefix
caching) and its own pin lifetime — and a test fails when a new policy brings a combination none
of them has.  Every registered policy also runs in-process on a real engine
(test_vllm_contract.py) and against vLLM's loop without one (tests/core/test_decisions.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from adapters.vllm.tools.replay import ReplayOptions, replay
from adapters.vllm.tools.server import ManagedServer, ServeOptions
from lamps_agent.policies import POLICIES, Policy
from lamps_agent.workloads import generate_programs, poisson_workload

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PROGRAMS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workload() -> list:  # type: ignore[type-arg]
    fits = [p for p in generate_programs(200, seed=3) if p.segments[-1].prompt_tokens < 1500]
    return poisson_workload(fits[:PROGRAMS], qps=4.0, seed=3)


SERVED = ("vllm", "vllm-nocache", "lamps", "infercept", "wait", "nested-wait", "program",
          "continuum", "thunderagent")  # fmt: skip


def _drives(name: str) -> tuple[bool, ...]:
    cls = POLICIES.get(name)
    own_ttl = cls.pin_ttl is not Policy.pin_ttl
    return (cls.adjusts_paused, cls.uses_holds, cls.gates_admission, cls.prefix_caching, own_ttl)


def test_the_served_policies_cover_every_way_a_policy_drives_the_plugin() -> None:
    served = {_drives(name) for name in SERVED}
    missing = [name for name in POLICIES.names() if _drives(name) not in served]
    assert not missing, f"serve one of these too: {missing}"


@pytest.mark.parametrize("policy", SERVED)
def test_every_policy_serves_a_replay_and_gives_every_block_back(
    tiny_model: Path, tmp_path: Path, policy: str
) -> None:
    stats = tmp_path / "stats.json"
    opts = ServeOptions(
        model=str(tiny_model), policy=policy, port=_free_port(), stats_file=str(stats),
        async_scheduler=False,
        vllm_args=("--enforce-eager", "--block-size", "32", "--max-model-len", "2048",
                   "--kv-cache-memory-bytes", str(2 * 2**20), "--max-num-seqs", "16"),
    )  # fmt: skip
    arrivals = _workload()
    with ManagedServer(opts, log_path=tmp_path / "server.log") as server:
        results = asyncio.run(
            replay(
                arrivals,
                ReplayOptions(url=server.url, model=str(tiny_model), time_scale=0.02, seed=3),
            )
        )
        # The engine went idle: the plug-in writes its stats then.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if stats.exists() and json.loads(stats.read_text())["waiting"] == 0:
                break
            time.sleep(0.2)
        data = json.loads(stats.read_text())
    assert len(results) == PROGRAMS
    assert all(r.finish >= r.arrival for r in results)
    assert data["policy"] == policy and data["errors"] == 0
    assert data["hints"]["ok"] >= sum(len(a.program.segments) for a in arrivals)
    assert data["pins_active"] == 0  # every session's last turn ended it
    assert data["free_blocks"] == data["usable_blocks"]
