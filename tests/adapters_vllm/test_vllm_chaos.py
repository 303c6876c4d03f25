"""The short form of ``benchmarks/chaos.py engine``: ``lamps-agent serve`` under fuzzed hints
(wrong types, NaN / inf, ±1e308, huge strings, unknown strategies and versions, hot sessions sent
concurrently, extreme priorities) at concurrency 32 with 10 % of the requests aborted mid-stream,
for two policies; then a long request among short ones for 20 s (10 s is too short when the
machine is shared: the long request alone needs several seconds of prefill and decode); then
lying tenants (1-token and instant-tool claims, false finals, 100k-token claims) beside an honest
one.  No crash, no stall, every malformed hint counted, no plug-in error, once idle past the
longest pin TTL every KV block free, and every liar's hints discounted, the honest tenant's
never.  The full form (every policy, 60 s of starvation) is in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytest.importorskip("aiohttp", reason="the vllm extra is not installed")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CHAOS = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos.py"
ROOT = str(CHAOS.parents[1])


def test_engine_chaos_short_form(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    argv = [
        sys.executable, str(CHAOS), "engine", "--policies", "lamps,wait", "--requests", "400",
        "--starve-seconds", "20", "--lie-sessions", "3", "--lie-turns", "3",
        "--model", str(tiny_model), "--log-dir", str(tmp_path),
        "--json", str(out),
    ]  # fmt: skip
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": ROOT if not path else f"{ROOT}{os.pathsep}{path}"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert out.exists(), done.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    assert [o["policy"] for o in outcomes] == ["lamps", "wait"]
    for o in outcomes:
        assert o["errors_5xx"] == 0 and o["transport_errors"] == 0 and o["stalls"] == 0, o
        assert o["aborted"] > 0 and o["rejected_4xx"] > 0 and o["server_alive"], o
        assert o["hints_malformed"] > 0 and o["plugin_errors"] == 0, o
        assert o["hints_malformed"] == o["hints_expected"]["malformed"], o
        assert o["pins_made"] > 0 and o["pins_active_idle"] == 0, o
        assert o["free_blocks_idle"] == o["usable_blocks"], o
        assert o["starve_completed"] and o["starve_under_pressure"], o
        # lying tenants through the served hint path: each discounted, the honest one never
        assert o["lies_run"] and o["lies_ok"] and o["lies_turns"] == "36/36", o
        assert o["lies_discounted"].startswith("honest 0,"), o
    assert done.returncode == 0, done.stdout
