"""The plug-in's own overhead per scheduler step with 1,000 waiting requests, against stock vLLM.

    python benchmarks/vllm_sched_overhead.py --model /tmp/tiny-llama           # all three, in turn

Each policy runs in its own process (in-process engine, tiny model, CPU): 1,000 requests with
hints are added at once, then the engine steps; every ``Scheduler.schedule()`` call is timed while
at least 900 requests wait.  The model's forward pass is not in the figure — only scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model: str, policy: str, waiting: int, steps: int) -> dict[str, float]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT))
    from vllm import LLM, SamplingParams

    from lamps_agent.hints import LampsHints
    from lamps_agent.request import KVStrategy

    kwargs = {}
    if policy != "stock":
        kwargs = {
            "scheduler_cls": "adapters.vllm.scheduler.LampsScheduler",
            "additional_config": {"lamps": {"policy": policy}},
        }
    llm = LLM(model=model, kv_cache_memory_bytes=64 * 2**20, enforce_eager=True, block_size=32,
              max_model_len=2048, max_num_seqs=8, enable_prefix_caching=True, **kwargs)  # fmt: skip
    engine = llm.llm_engine
    sched = engine.engine_core.engine_core.scheduler
    rng = random.Random(0)
    for i in range(waiting):
        out = rng.randint(8, 64)
        tool = rng.choice(["search", "calculator", None])
        hints = LampsHints(
            session_id=f"s{i}", priority=0, agent="bench", step=0, output_tokens=out, tool=tool,
            tool_duration=rng.uniform(0.1, 30.0) if tool else 0.0, kv_strategy=KVStrategy.PRESERVE,
        )  # fmt: skip
        params = SamplingParams(
            max_tokens=out, ignore_eos=True, temperature=0.0, extra_args=hints.to_xargs()
        )
        engine.add_request(
            str(i),
            {"prompt_token_ids": [rng.randrange(5, 300) for _ in range(rng.randint(50, 400))]},
            params,
        )
    times: list[float] = []
    original = sched.schedule

    def timed(*args, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter_ns()
        result = original(*args, **kw)
        if len(sched.waiting) >= waiting - 100:
            times.append((time.perf_counter_ns() - t) / 1e6)
        return result

    sched.schedule = timed
    while len(times) < steps and engine.has_unfinished_requests():
        engine.step()
    q = statistics.quantiles(times, n=100)
    return {
        "policy": policy,
        "steps": len(times),
        "mean_ms": statistics.fmean(times),
        "p50_ms": q[49],
        "p99_ms": q[98],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--policy", help="measure one policy in this process (used by the driver)")
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if args.policy:
        print(json.dumps(measure(args.model, args.policy, args.waiting, args.steps)))
        return
    rows = []
    from lamps_agent.policies import POLICIES

    for policy in ("stock", *POLICIES.names()):
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--policy", policy,
             "--waiting", str(args.waiting), "--steps", str(args.steps)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["mean_ms"]
    print(
        f"| scheduler | steps timed | mean ms | p50 ms | p99 ms | mean vs stock |  ({args.waiting} waiting)"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['steps']} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms'] / base:.2f}× |"
        )


if __name__ == "__main__":
    main()
