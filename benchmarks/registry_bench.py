"""Benchmarks of the tool registry (docs/benchmarks.md, section "Tool registry").

    python benchmarks/registry_bench.py record-cost            # record() cost on the caller's thread
    python benchmarks/registry_bench.py throughput [--url URL] # sustained records/s into a database
    python benchmarks/registry_bench.py estimate               # estimate() with 1,000,000 calls
    python benchmarks/registry_bench.py infercept              # prediction quality on INFERCEPT
    python benchmarks/registry_bench.py all [--postgres URL]

Each sub-command prints a small table; SQLite files go to a temporary directory that is removed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tool_registry import ToolRegistry

TRACE = Path(__file__).resolve().parent.parent / "lamps_agent" / "data" / "merged_exp_uniform.json"


@contextmanager
def temp_sqlite() -> Iterator[tuple[str, Path]]:
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        yield f"sqlite:///{tmp}/registry.db", Path(tmp) / "spill"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


def bench_record_cost(calls: int = 200_000) -> dict[str, float]:
    """Time each record() call on the caller's thread while the writer drains into SQLite."""
    with temp_sqlite() as (url, spill), ToolRegistry(url, spill_dir=spill, max_buffer=calls) as reg:
        for _ in range(2000):  # warm-up
            reg.record("warm", duration=0.1)
        reg.flush()
        clock = time.perf_counter_ns
        samples = [0] * calls
        for i in range(calls):
            start = clock()
            reg.record("search", duration=0.25, session_id="s")
            samples[i] = clock() - start
        reg.flush()
    samples.sort()
    result = {
        "calls": calls,
        "median_us": percentile(samples, 0.5) / 1000,
        "p99_us": percentile(samples, 0.99) / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
    }
    print(
        f"record() on the caller's thread, {calls:,} calls into SQLite: "
        f"median {result['median_us']:.2f} us, p99 {result['p99_us']:.2f} us, "
        f"mean {result['mean_us']:.2f} us"
    )
    return result


def bench_throughput(url: str | None, records: int = 300_000, batch_size: int = 512) -> float:
    """Record ``records`` calls as fast as one thread can, then flush; records/s end to end."""
    cpu_per_record = [0.0]  # this process's CPU time (all threads) per record, in us

    def run(target: str, spill: Path) -> float:
        with ToolRegistry(
            target, spill_dir=spill, batch_size=batch_size, max_buffer=records
        ) as reg:
            tools = [f"tool{i}" for i in range(8)]
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(records):
                reg.record(tools[i & 7], duration=0.001 * (i % 100))
            reg.flush()
            elapsed = time.perf_counter() - start
            cpu_per_record[0] = (time.process_time() - cpu) / records * 1e6
            assert sum(s.count for s in reg.stats()) >= records
        return records / elapsed

    if url is None:
        with temp_sqlite() as (sqlite_url, spill):
            rate = run(sqlite_url, spill)
        where = "SQLite (WAL, temp file)"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rate = run(url, Path(tmp))
        where = url.split("@")[-1]
    print(
        f"sustained recording into {where}: {rate:,.0f} records/s ({records:,} records, "
        f"batch {batch_size}; {cpu_per_record[0]:.1f} us of this process's CPU per record)"
    )
    return rate


def bench_estimate(calls: int = 1_000_000) -> dict[str, float]:
    """estimate() latency for a tool with ``calls`` recorded calls (inserted by the normal path)."""
    with temp_sqlite() as (url, spill):
        with ToolRegistry(url, spill_dir=spill, max_buffer=calls, batch_size=4096) as reg:
            reg.register("search", duration_hint=1.0)
            rng = random.Random(1)
            start = time.perf_counter()
            for _ in range(calls):
                reg.record("search", duration=rng.lognormvariate(0.0, 0.8))
            reg.flush()
            fill = time.perf_counter() - start
        start = time.perf_counter()
        reg = ToolRegistry(url, spill_dir=spill)  # a fresh process's view: loaded from the DB
        load = time.perf_counter() - start
        try:
            assert reg.estimate("search").count == calls
            hits = time_calls(lambda: reg.estimate("search"), 100_000)

            def recompute() -> object:
                reg._estimates.clear()
                return reg.estimate("search")

            misses = time_calls(recompute, 20_000)
            # (clearing the cache stands for the first estimate() after a batch was written)
        finally:
            reg.close()
    result = {
        "fill_s": fill,
        "load_s": load,
        "cached_median_us": hits[0],
        "cached_p99_us": hits[1],
        "recomputed_median_us": misses[0],
        "recomputed_p99_us": misses[1],
    }
    print(
        f"estimate() with {calls:,} calls (inserted via record()+flush in {fill:.1f} s; "
        f"registry start-up {load * 1000:.0f} ms):\n"
        f"  cached:     median {hits[0]:.2f} us, p99 {hits[1]:.2f} us\n"
        f"  recomputed: median {misses[0]:.2f} us, p99 {misses[1]:.2f} us  "
        "(after each batch write)"
    )
    return result


def time_calls(func: Callable[[], object], repeat: int) -> tuple[float, float]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(repeat):
        start = clock()
        func()
        samples.append(clock() - start)
    samples.sort()
    return percentile(samples, 0.5) / 1000, percentile(samples, 0.99) / 1000


# INFERCEPT


def classify(conversation: str, segments: list[dict[str, object]]) -> Iterator[tuple[str, float]]:
    """(tool type, api_time) of each API call of a conversation (see docs/tool-registry.md)."""
    calls = [s for s in segments if "api_time" in s]
    if not calls:
        return
    if "prompt_tokens" in calls[0]:
        times = [float(s["api_time"]) for s in calls]  # type: ignore[arg-type]
        hex_id = len(conversation) == 32 and all(c in "0123456789abcdef" for c in conversation)
        if hex_id:
            kind = "calculator" if statistics.fmean(times) < 0.01 else "wikipedia"
        else:
            kind = "alfworld"
        for value in times:
            yield kind, value
        return
    for segment in calls:
        token = str(segment.get("api_token", ""))
        if token.startswith("Convert this to text to speech"):
            kind = "tts"
        elif token.startswith("Generate an image"):
            kind = "image_gen"
        else:
            kind = "human"
        yield kind, float(segment["api_time"])  # type: ignore[arg-type]


def interleave(trace: dict[str, list[dict[str, object]]], seed: int) -> list[tuple[str, float]]:
    """All calls in one order: repeatedly pick a random unfinished conversation (seeded) and take
    its next call, so each conversation's calls keep their order (the trace has no timestamps)."""
    queues = [list(classify(cid, segs)) for cid, segs in sorted(trace.items())]
    queues = [q for q in queues if q]
    positions = [0] * len(queues)
    rng = random.Random(seed)
    active = list(range(len(queues)))
    order: list[tuple[str, float]] = []
    while active:
        slot = rng.randrange(len(active))
        index = active[slot]
        order.append(queues[index][positions[index]])
        positions[index] += 1
        if positions[index] == len(queues[index]):
            active[slot] = active[-1]
            active.pop()
    return order


def bench_infercept(seed: int = 0, trace_path: Path = TRACE) -> dict[str, dict[str, float]]:
    """Replay the trace's tool calls in order; before each call compare the online estimate with
    the per-type mean known in hindsight, and both against the call's actual duration."""
    trace = json.loads(trace_path.read_text())
    calls = interleave(trace, seed)
    truth: dict[str, list[float]] = defaultdict(list)
    for kind, value in calls:
        truth[kind].append(value)
    hindsight = {kind: statistics.fmean(values) for kind, values in truth.items()}
    errors: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with temp_sqlite() as (url, spill), ToolRegistry(url, spill_dir=spill) as reg:
        for kind, value in calls:
            est = reg.estimate(kind)
            e = errors[kind]
            e["online"].append(abs(est.mean - value))
            e["oracle"].append(abs(hindsight[kind] - value))
            if est.count:  # after the first call of the type (before it: the default, 5 s)
                e["online_seen"].append(abs(est.mean - value))
                e["oracle_seen"].append(abs(hindsight[kind] - value))
                e["gap"].append(abs(est.mean - hindsight[kind]) / max(hindsight[kind], 1e-12))
            reg.record(kind, duration=value)
            reg.flush()  # the next call sees this one, as a sequential replay would
        final = {kind: reg.estimate(kind).mean for kind in truth}
    print(f"INFERCEPT merged_exp_uniform.json: {len(calls):,} tool calls, interleaving seed {seed}")
    print(
        "| type | calls | hindsight mean (s) | MAE online (s) | MAE online, after 1st call (s) "
        "| MAE hindsight mean, same calls (s) | ratio | median rel. gap online vs hindsight "
        "| final rel. gap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[str, dict[str, float]] = {}
    for kind in sorted(truth):
        e = errors[kind]
        row = {
            "calls": len(truth[kind]),
            "hindsight_mean": hindsight[kind],
            "mae_online": statistics.fmean(e["online"]),
            "mae_online_seen": statistics.fmean(e["online_seen"]),
            "mae_hindsight_seen": statistics.fmean(e["oracle_seen"]),
            "median_rel_gap": statistics.median(e["gap"]),
            "final_rel_gap": abs(final[kind] - hindsight[kind]) / hindsight[kind],
        }
        row["ratio"] = row["mae_online_seen"] / row["mae_hindsight_seen"]
        rows[kind] = row
        print(
            f"| {kind} | {row['calls']} | {row['hindsight_mean']:.4g} | {row['mae_online']:.4g} | "
            f"{row['mae_online_seen']:.4g} | {row['mae_hindsight_seen']:.4g} | "
            f"{row['ratio']:.2f} | {row['median_rel_gap']:.1%} | {row['final_rel_gap']:.2%} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "which", choices=("record-cost", "throughput", "estimate", "infercept", "all")
    )
    parser.add_argument(
        "--url", default=None, help="database for throughput (default: temp SQLite)"
    )
    parser.add_argument(
        "--postgres", default=None, help="with 'all': also measure this PostgreSQL URL"
    )
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per database")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.which in ("record-cost", "all"):
        bench_record_cost()
    if args.which in ("throughput", "all"):
        urls = [args.url] + ([args.postgres] if args.which == "all" and args.postgres else [])
        for url in urls:
            rates = sorted(bench_throughput(url, args.records) for _ in range(args.repeat))
            print(
                f"  -> median {statistics.median(rates):,.0f} records/s, best {rates[-1]:,.0f}, "
                f"worst {rates[0]:,.0f} over {args.repeat} runs"
            )
    if args.which in ("estimate", "all"):
        bench_estimate()
    if args.which in ("infercept", "all"):
        bench_infercept(args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
