"""Simulator speed: wall and CPU time of one (policy, qps) run over the multi-API trace, and how it
grows with the number of programs.

    python benchmarks/sim_speed.py --policies vllm,infercept,lamps,wait,nested-wait --qps 6 --repeat 3

Times the simulation only (the trace is loaded once, outside the timed region); prints the median
of ``--repeat`` runs.  CPU time (process_time) is reported beside wall time because it is far less
sensitive to other load on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from lamps_agent.policies import make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import load_preset
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import load_trace, poisson_workload


def time_run(policy: str, programs, preset, qps: float, n: int | None) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    arrivals = poisson_workload(programs, qps=qps, seed=0, num_programs=n)
    sim = Simulator(
        preset=preset,
        policy=make_policy(policy, predictor=make_predictor("oracle"), preset=preset),
        arrivals=arrivals,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    result = sim.run(RunLabels(policy=policy, predictor="oracle", qps=qps))
    return time.perf_counter() - wall, time.process_time() - cpu, result.summary.iterations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--policies", default="vllm,infercept,lamps,lamps-norank,sjf,wait,nested-wait"
    )
    parser.add_argument("--qps", type=float, default=6.0)
    parser.add_argument(
        "--scale", type=int, default=10, help="programs multiplier for the growth check"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    programs = load_trace("multi-api").programs
    preset = load_preset("a100-gptj6b")
    print(f"multi-api trace, a100-gptj6b, qps {args.qps:g}, median of {args.repeat}")
    print("| policy | programs | wall s | CPU s | iterations | CPU ×, vs 1× programs |")
    print("|---|---:|---:|---:|---:|---:|")
    for policy in args.policies.split(","):
        base_cpu = None
        for n in (len(programs), len(programs) * args.scale):
            runs = [time_run(policy, programs, preset, args.qps, n) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            base_cpu = base_cpu or cpu
            print(
                f"| {policy} | {n} | {wall:.2f} | {cpu:.2f} | {runs[0][2]:,} | {cpu / base_cpu:.1f} |"
            )


if __name__ == "__main__":
    main()
