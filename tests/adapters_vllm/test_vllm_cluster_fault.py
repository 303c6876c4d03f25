"""A replica dies under a streamed agent turn (``lamps-agent cluster``, 2 tiny-model replicas,
vllm-router, a LangChain agent with ``LampsMiddleware`` streaming through ``ChatOpenAI``).

The cluster is started as docs/vllm.md shows it.  Checked: each replica's ``VLLM::Worker`` runs on
the cores the launcher gave it (one core each on a 2-core machine); once the server of the replica
running the agent's streamed turn has generated some of it (read by a watcher process,
replica_killer.py), that server gets SIGKILL (the server alone, as a crash: its engine processes
live on); the agent's turn completes (called again by the middleware,
counted once, a complete reply); the launcher reports the death in one line within seconds; 20 s
after the kill no process of the dead replica is left; a replacement serves within 120 s; the
router's ``/readiness`` stays 200 and ``/liveness`` too; stopping the launcher leaves no process
group.  The measured times are printed and written to ``fault.json`` in the cluster's log folder.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.langchain, pytest.mark.slow]
pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytest.importorskip("vllm_router", reason="the cluster extra (vllm-router) is not installed")
pytest.importorskip("langchain_openai", reason="the langchain extra is not installed")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402

from adapters.langchain import LampsMiddleware  # noqa: E402
from adapters.vllm.tools.cluster import (  # noqa: E402
    ClusterOptions,
    cpu_layout,
    group_members,
    http_status,
    read_manifest,
)
from adapters.vllm.tools.server import ServeOptions  # noqa: E402
from tests.adapters_vllm.test_vllm_cluster import _port_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ["--enforce-eager", "--block-size", "32", "--max-model-len", "8192",
          "--kv-cache-memory-bytes", "64000000"]  # fmt: skip
MAX_TOKENS = 6000  # long enough that a kill read seconds late still cuts it (CI read 2,387)
KILL_AFTER = 100  # tokens the server generates before it dies


class Launcher:
    """``lamps-agent cluster`` as a subprocess; its stderr lines with the time they came."""

    def __init__(self, cmd: list[str], log_dir: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        # as a user runs it: the engine in its own processes (conftest sets in-process for its
        # own engines)
        env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                     env={**env, "PYTHONPATH": str(ROOT)})  # fmt: skip
        self.log_dir = log_dir
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with (self.log_dir / "launcher.log").open("w") as out:
            for line in self.proc.stderr:
                self.lines.append((time.monotonic(), line.rstrip()))
                out.write(line)
                out.flush()

    def first(self, text: str, *, after: float = -math.inf) -> float | None:
        return next((t for t, line in self.lines if t >= after and text in line), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _worker_cores(pgid: int) -> set[int]:
    for pid in group_members(pgid):
        if Path(f"/proc/{pid}/comm").read_text().startswith("VLLM::Worker"):
            return set(os.sched_getaffinity(pid))
    raise AssertionError(f"no VLLM::Worker in process group {pgid}")


def _start_killer(replicas: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """The watcher that kills the generating replica's server (replica_killer.py), once ready."""
    killer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("replica_killer.py")), "--after",
         str(KILL_AFTER), *(f"{r['url']}={r['pid']}" for r in replicas)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert killer.stdout is not None
    line = killer.stdout.readline().strip()
    assert line == "ready", f"the replica killer did not start: {line!r}"
    return killer


def test_a_streamed_agent_turn_survives_its_replica(tiny_model: Path, tmp_path: Path) -> None:
    log_dir, base = tmp_path / "cluster", _port_block(4)
    log_dir.mkdir()
    url = f"http://127.0.0.1:{base}"
    launcher = Launcher([
        sys.executable, "-m", "lamps_agent.cli.main", "cluster", "--model", str(tiny_model),
        "--replicas", "2", "--port", str(base), "--metrics-port", str(base + 1),
        "--replica-port", str(base + 2), "--log-dir", str(log_dir), "--", *ENGINE,
    ], log_dir)  # fmt: skip
    report: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 600
        while launcher.first("Ctrl-C stops all") is None:
            assert launcher.proc.poll() is None, launcher.text()
            assert time.monotonic() < deadline, launcher.text()
            time.sleep(0.5)
        replicas = read_manifest(log_dir)["replicas"]

        # each replica's worker on the cores it was given
        layout = cpu_layout(ClusterOptions(serve=ServeOptions(model="m"), reserved_cpus=1))
        assert layout is not None
        for i, r in enumerate(replicas):
            assert r["cores"] == layout.bind(i)
            assert _worker_cores(int(r["pid"])) == set(layout.replica_cores[i])
        report["cores"] = [r["cores"] for r in replicas]
        ready_by = time.monotonic() + 60  # the router routes once it has seen both replicas
        while http_status(f"{url}/readiness") != 200:
            assert time.monotonic() < ready_by, "the router never became ready"
            time.sleep(0.5)

        # The kill is timed by the server's metrics, which can lag the stream under load (CI: the
        # counter read 1,299 tokens while the router had all 6,000): a kill that came after the
        # whole turn was sent cut nothing, and the scenario runs once more on the restarted
        # replica (report["late_kills"]).
        for attempt in range(2):
            # an agent streams a long turn; once it has sent tokens, its replica's server dies
            replicas = read_manifest(log_dir)["replicas"]  # a restarted replica has a new pid
            middleware = LampsMiddleware(transport="extra_body", retry_delay_s=0.5)
            model = ChatOpenAI(base_url=f"{url}/v1", api_key="none", model=str(tiny_model),
                               streaming=True, max_tokens=MAX_TOKENS, temperature=0,
                               extra_body={"ignore_eos": True}, timeout=120)  # fmt: skip
            agent = create_agent(model=model, tools=[], middleware=[middleware])
            seen: list[str] = []
            final: dict[str, Any] = {}
            errors: list[Exception] = []

            def run(agent: Any, seen: list[str], final: dict[str, Any], errors: list[Exception],
                    thread_id: str) -> None:  # fmt: skip
                config = {"configurable": {"thread_id": thread_id}}
                try:
                    for mode, data in agent.stream({"messages": [("user", "tell a long story")]},
                                                   config, stream_mode=["messages", "values"]):  # fmt: skip
                        if mode == "messages":
                            seen.append(str(data[0].content))
                        else:
                            final.update(data)
                except Exception as exc:  # noqa: BLE001 (reported by the main thread)
                    errors.append(exc)

            # The kill is timed by the server alone: a watcher process SIGKILLs the replica whose
            # generated-token counter rose by KILL_AFTER tokens.  Timed by the client (its first
            # chunk) the kill came too late in CI and here: the agent's per-chunk work on 2 cores lagged
            # the stream by seconds, and the server had sent 2,387 and then all 3,000 tokens.  Once
            # the server has generated tokens the router has sent its 200 and cannot call another
            # replica itself, so the cut reaches the client whether or not it has read a chunk yet.
            killer = _start_killer(replicas)
            thread = threading.Thread(
                target=run, args=(agent, seen, final, errors, f"fault-{attempt}")
            )
            t_start = time.monotonic()
            thread.start()
            try:
                out, _ = killer.communicate(timeout=150)
            finally:
                killer.kill()
            killed = json.loads(out.strip().splitlines()[-1])
            assert "index" in killed, (
                f"{killed}; the turn never streamed (thread alive {thread.is_alive()}, {len(seen)} "
                f"chunks, error {errors[0] if errors else None!r})"
            )
            # the kill's own time: the supervisor can report the death before the killer has
            # exited (CI: "replica-0: died" logged before communicate() returned, so not found)
            t_kill = float(killed["at"])
            victim_index, generated_at_kill = int(killed["index"]), float(killed["generated"])
            victim = int(replicas[victim_index]["pid"])
            name, victim_url = replicas[victim_index]["name"], replicas[victim_index]["url"]
            report.update(
                chunks_before_kill=len(seen),
                server_tokens_before_kill=generated_at_kill,
                kill_after_s=round(t_kill - t_start, 2),
            )
            assert generated_at_kill > 0, report

            ready, alive, orphans = [], [], None
            while time.monotonic() - t_kill < 150:
                ready.append(http_status(f"{url}/readiness"))
                alive.append(http_status(f"{url}/liveness"))
                if orphans is None and time.monotonic() - t_kill >= 20:
                    orphans = group_members(victim)
                if orphans is not None and launcher.first(f"{name}: serving again", after=t_kill):
                    break
                time.sleep(0.5)
            thread.join(timeout=120)
            assert not errors, f"the agent's turn failed: {errors[0]!r}"
            died = launcher.first(f"{name}: died", after=t_kill)
            served = launcher.first(f"{name}: serving again", after=t_kill)
            reply = final["messages"][-1]
            report.update(
                detect_s=round(died - t_kill, 1) if died else None,
                serving_s=round(served - t_kill, 1) if served else None,
                orphans_after_20s=orphans,
                readiness=dict(Counter(ready)),
                liveness=dict(Counter(alive)),
                retries=middleware.num_model_retries,
                reply_finish_reason=reply.response_metadata.get("finish_reason"),
                replacement_health=http_status(f"{victim_url}/health"),
            )
            late = middleware.num_model_retries == 0 and not errors and attempt == 0
            if not (late and reply.response_metadata.get("finish_reason") == "length"):
                break
            report["late_kills"] = report.get("late_kills", 0) + 1
            print(f"the kill came after the whole turn was sent: again ({report})", flush=True)
        print(json.dumps(report, indent=2))
        (log_dir / "fault.json").write_text(json.dumps(report, indent=2))

        assert generated_at_kill < MAX_TOKENS, report  # the kill cut the turn mid-way
        assert isinstance(reply, AIMessage) and reply.response_metadata["finish_reason"] == "length"
        assert middleware.num_model_retries == 1
        assert sum(isinstance(m, AIMessage) for m in final["messages"]) == 1
        assert died is not None and died - t_kill < 15, launcher.text()
        assert f"{name}: died (killed by SIGKILL), log " in launcher.text()
        assert orphans == []
        assert served is not None and served - t_kill < 120, launcher.text()
        assert report["replacement_health"] == 200
        # The router never stopped answering: on 2 cores a 2 s probe can go unanswered while the
        # replacement replica starts (CI, 2026-12-07: 1 of 72), but never two in a row, and it
        # never answered an error.
        assert set(alive) <= {200, 0} and alive.count(200) >= 0.9 * len(alive), report
        assert all(a or b for a, b in itertools.pairwise(alive)), report
        assert ready.count(200) >= 0.9 * len(ready)
    finally:
        pgids = [int(r["pid"]) for r in read_manifest(log_dir)["replicas"]] if (
            log_dir / "cluster.json").exists() else []  # fmt: skip
        launcher.stop()
    time.sleep(1.0)
    assert {p: group_members(p) for p in pgids if group_members(p)} == {}
