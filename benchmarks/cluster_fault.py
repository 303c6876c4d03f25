"""A fault run of ``lamps-agent cluster`` (docs/vllm.md, "Many replicas"): kill a replica's server
while a streamed turn runs on it, and time what the launcher does.

    flock /tmp/vllm.lock python benchmarks/cluster_fault.py --model /tmp/tiny-llama \\
        [--replicas 2] [--log-dir /tmp/cluster-fault] [--port 8000] [--json FILE]

Starts the cluster as a user would (a subprocess, the tiny model's engine options), prints each
replica's processes with the cores their threads may run on (``taskset``'s view), starts one
streamed chat turn per replica, SIGKILLs replica 1's server process (only the server: its engine
processes live on, as after a crash), and measures: seconds until the launcher reports the death,
until the replacement answers ``/health`` and until the launcher says it serves; the router's
``/readiness`` and ``/liveness`` every half second meanwhile; the dead replica's processes left 20 s
after the kill (its process group, and any vLLM process re-parented to PID 1). Then stops the
cluster with SIGTERM and checks that no process group is left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.vllm.tools.cluster import group_members, http_status, read_manifest  # noqa: E402

ENGINE = ["--enforce-eager", "--block-size", "32", "--max-model-len", "4096",
          "--kv-cache-memory-bytes", "64000000"]  # fmt: skip


def _threads_cores(pid: int) -> str:
    """The union of the cores the process's threads may run on."""
    cores: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            cores |= os.sched_getaffinity(int(task.name))
        except OSError:
            continue
    from adapters.vllm.tools.cpu_layout import format_cores

    return format_cores(sorted(cores))


def _describe_group(pgid: int) -> list[str]:
    out = []
    for pid in group_members(pgid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        taskset = subprocess.run(["taskset", "-cp", str(pid)], capture_output=True, text=True)
        out.append(f"{pid} {comm}: {taskset.stdout.strip()} (threads: {_threads_cores(pid)})")
    return out


def _stream(url: str, session: str, result: dict[str, Any]) -> None:
    body = json.dumps({
        "model": result["model"], "stream": True, "max_tokens": 4000, "ignore_eos": True,
        "messages": [{"role": "user", "content": "tell a long story"}],
    }).encode()  # fmt: skip
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "X-Session-ID": session})  # fmt: skip
    chunks, done = 0, False
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            for line in resp:
                if line.startswith(b"data: [DONE]"):
                    done = True
                elif line.startswith(b"data: "):
                    chunks += 1
    except (OSError, ValueError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result.update(chunks=chunks, done=done)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/tmp/tiny-llama")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--log-dir", default="/tmp/cluster-fault")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    log_dir, port = Path(args.log_dir), args.port
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lamps_agent.cli.main", "cluster", "--model", args.model,
           "--replicas", str(args.replicas), "--log-dir", str(log_dir), "--port", str(port),
           "--metrics-port", str(port + 1), "--replica-port", str(port + 100), "--", *ENGINE]  # fmt: skip
    lines: list[tuple[float, str]] = []
    t_start = time.monotonic()
    launcher = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip

    def read() -> None:
        assert launcher.stderr is not None
        for line in launcher.stderr:
            lines.append((time.monotonic(), line.rstrip()))
            print(f"[{time.monotonic() - t_start:6.1f}] {line.rstrip()}", flush=True)

    threading.Thread(target=read, daemon=True).start()
    report: dict[str, Any] = {}
    try:
        while not any("Ctrl-C stops all" in text for _, text in lines):
            if launcher.poll() is not None:
                raise SystemExit(f"the launcher exited with {launcher.returncode}")
            time.sleep(0.5)
        report["start_s"] = round(time.monotonic() - t_start, 1)
        manifest = read_manifest(log_dir)
        for r in manifest["replicas"]:
            print(f"{r['name']} (cores {r.get('cores')}):")
            for row in _describe_group(int(r["pid"])):
                print(f"   {row}")
        model = json.loads(urllib.request.urlopen(f"{url}/v1/models").read())["data"][0]["id"]
        streams = [{"model": model} for _ in range(args.replicas)]
        threads = [threading.Thread(target=_stream, args=(url, f"fault-{i}", s))
                   for i, s in enumerate(streams)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(1.0)  # the streams have started
        victim = int(manifest["replicas"][1]["pid"])
        victim_url = manifest["replicas"][1]["url"]
        before = group_members(victim)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        ready, alive, orphans_20 = [], [], None
        health_at = None
        while time.monotonic() - t_kill < 180:
            now = time.monotonic() - t_kill
            ready.append(http_status(f"{url}/readiness"))
            alive.append(http_status(f"{url}/liveness"))
            if health_at is None and http_status(f"{victim_url}/health") == 200:
                health_at = now
            if orphans_20 is None and now >= 20:
                orphans_20 = group_members(victim)
            said = any("serving again" in text for _, text in lines)
            if said and orphans_20 is not None:
                break
            time.sleep(0.5)
        died = next((t for t, text in lines if "replica-1: died" in text), None)
        served = next((t for t, text in lines if "replica-1: serving again" in text), None)
        for t in threads:
            t.join(timeout=120)
        report.update(
            group_before_kill=len(before),
            detect_s=round(died - t_kill, 1) if died else None,
            replacement_health_s=round(health_at, 1) if health_at is not None else None,
            replacement_reported_s=round(served - t_kill, 1) if served else None,
            orphans_after_20s=orphans_20,
            readiness=dict(Counter(ready)),  # status -> probes (0: no answer within 2 s)
            liveness=dict(Counter(alive)),
            streams=streams,
        )
        manifest = read_manifest(log_dir)
        report["replacement_cores"] = _describe_group(int(manifest["replicas"][1]["pid"]))
    finally:
        done = (log_dir / "cluster.json").exists()
        pgids = [int(r["pid"]) for r in read_manifest(log_dir)["replicas"]] if done else []
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
        time.sleep(1.0)
        report["left_after_stop"] = {p: group_members(p) for p in pgids if group_members(p)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
