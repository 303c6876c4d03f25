"""``lamps-agent bench``: policies × predictors × arrival rates on a trace, in the simulator.

Example::

    lamps-agent bench --trace multi-api --qps 1,2,3,4,5,6 --policies vllm,infercept,lamps \
        --preset a100-gptj6b --baseline infercept --out results/multi
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lamps_agent.bench.plots import plot_kv_timeline, plot_latency_vs_qps
from lamps_agent.bench.report import results_table, write_csv, write_json, write_markdown
from lamps_agent.bench.runner import BenchConfig, RunSpec, run_grid
from lamps_agent.metrics import RunResult
from lamps_agent.policies import POLICIES
from lamps_agent.predictors import PREDICTORS
from lamps_agent.presets import PRESETS, load_preset, parse_overrides
from lamps_agent.program import Program
from lamps_agent.workloads import generate_programs, load_trace


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="simulate scheduling policies on an agent trace",
        description="Simulate scheduling policies on an agent trace and compare them.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--trace",
        default="multi-api",
        help="INFERCEPT-format trace file, or a built-in: multi-api, single-api (default multi-api)",
    )
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic programs instead")
    p.add_argument("--qps", default="1,2,3,4,5,6", help="comma-separated arrival rates")
    p.add_argument(
        "--policies",
        default="vllm,infercept,lamps",
        help=f"comma-separated, from: {', '.join(POLICIES.names())}",
    )
    p.add_argument(
        "--predictors",
        "--predictor",
        default="oracle",
        help=f"comma-separated, from: {', '.join(PREDICTORS.names())} (noisy:PCT, e.g. noisy:40)",
    )
    p.add_argument("--preset", default="a100-gptj6b", help=f"one of: {', '.join(PRESETS.names())}")
    p.add_argument("--preset-file", type=Path, help="TOML/JSON file of preset fields")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (gpu_kv_gb=26, cost.base_ms=12); repeatable",
    )
    p.add_argument("--baseline", help="policy the reductions are relative to (default infercept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-programs", type=int, help="sample this many programs with replacement")
    p.add_argument(
        "--duration", type=float, help="arrivals for this many seconds (with replacement)"
    )
    p.add_argument(
        "--starvation-threshold",
        default="100",
        help="LAMPS starvation bound in iterations, or 'off' (default 100)",
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for CSV/JSON/PNG")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--timeline",
        metavar="POLICY@QPS",
        help="run whose KV memory over time is plotted (default: the last policy at the top qps)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    eng = p.add_argument_group(
        "real engine",
        "replay the workload against vLLM instead of simulating (needs the vllm extra)",
    )
    eng.add_argument(
        "--engine",
        metavar="URL|compare",
        help="a running OpenAI-compatible server, or 'compare' to start one server per "
        "--engine-policies entry in turn (same settings) and replay the same workload on each",
    )
    eng.add_argument("--model", help="model folder for --engine compare (e.g. a tiny local model)")
    eng.add_argument("--engine-policies", default="stock,lamps,infercept", help="for compare")
    eng.add_argument("--engine-label", default="engine", help="policy label of a --engine URL run")
    eng.add_argument("--time-scale", type=float, default=1.0, help="multiply tool durations")
    eng.add_argument("--no-hints", action="store_true", help="send no lamps hints")
    eng.add_argument("--swap", action="store_true", help="servers get the host-memory swap store")
    eng.add_argument("--vocab-high", type=int, default=300, help="random token ids below this")
    eng.add_argument("--port", type=int, default=8011, help="port for --engine compare servers")
    eng.add_argument(
        "--vllm-arg",
        action="append",
        metavar="ARG",
        help="a vLLM server option (repeatable, "
        "use --vllm-arg=--flag for values starting with a dash)",
    )
    p.set_defaults(handler=run_bench)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _programs(args: argparse.Namespace) -> tuple[list[Program], str]:
    if args.synthetic is not None:
        return generate_programs(args.synthetic, seed=args.seed), f"synthetic-{args.synthetic}"
    trace = load_trace(args.trace)
    return list(trace.programs), trace.name


def build_config(args: argparse.Namespace) -> BenchConfig:
    policies = _split(args.policies)
    for name in policies:
        POLICIES.get(name)  # unknown names fail here, listing the valid ones
    predictors = _split(args.predictors)
    for spec in predictors:
        PREDICTORS.get(spec.partition(":")[0])
    qps = [float(q) for q in _split(args.qps)]
    if not qps or any(q <= 0 for q in qps):
        raise ValueError("--qps needs positive rates")
    preset = load_preset(
        args.preset, config_file=args.preset_file, overrides=parse_overrides(args.set)
    )
    threshold = None if args.starvation_threshold == "off" else int(args.starvation_threshold)
    programs, name = _programs(args)
    timeline = None
    if not args.no_plots:
        if args.timeline:
            pol, _, q = args.timeline.partition("@")
            timeline = RunSpec(policy=pol, predictor=predictors[0], qps=float(q or max(qps)))
        else:
            timeline = RunSpec(policy=policies[-1], predictor=predictors[0], qps=max(qps))
    return BenchConfig(
        programs=programs,
        trace_name=name,
        preset=preset,
        qps=qps,
        policies=policies,
        predictors=predictors,
        seed=args.seed,
        num_programs=args.num_programs,
        duration=args.duration,
        policy_options={"starvation_threshold": threshold},
        timeline_for=timeline,
    )


def run_bench(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.engine:
        return _run_engine(args, config)
    baseline = args.baseline or (
        "infercept" if "infercept" in config.policies else config.policies[0]
    )
    probe = Console()
    # Off a terminal (CI logs, pipes) rich would squeeze the table into 80 columns.
    console = probe if probe.is_terminal else Console(width=200)
    results: list[RunResult] = []
    started = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("simulating", total=len(config.specs()))

        def done(spec: RunSpec, result: RunResult) -> None:
            results.append(result)
            progress.update(
                task, advance=1, description=f"{spec.policy} {spec.predictor} qps={spec.qps:g}"
            )

        run_grid(config, on_done=done)
    elapsed = time.perf_counter() - started
    summaries = [r.summary for r in results]
    console.print(
        f"[bold]{escape(config.trace_name)}[/bold]: {len(config.programs)} programs, preset "
        f"{config.preset.name} ({config.preset.gpu_kv_tokens:,} KV tokens), seed {config.seed}; "
        f"{len(results)} runs in {elapsed:.1f} s"
    )
    console.print(results_table(summaries, baseline if baseline in config.policies else None))
    _write_outputs(args, config, results, baseline, console)
    return 0


def _write_outputs(
    args: argparse.Namespace,
    config: BenchConfig,
    results: list[RunResult],
    baseline: str,
    console: Console,
) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary for r in results]
    write_csv(summaries, out / "results.csv", baseline)
    meta: dict[str, Any] = {
        "trace": config.trace_name,
        "programs": len(config.programs),
        "preset": dataclasses.asdict(config.preset),
        "overrides": args.set,
        "qps": list(config.qps),
        "policies": list(config.policies),
        "predictors": list(config.predictors),
        "seed": config.seed,
        "baseline": baseline,
    }
    write_json(summaries, out / "results.json", meta)
    write_markdown(summaries, out / "results.md", baseline if baseline in config.policies else None)
    written = ["results.csv", "results.json", "results.md"]
    if not args.no_plots:
        plot_latency_vs_qps(summaries, out / "latency_vs_qps.png", title=config.trace_name)
        written.append("latency_vs_qps.png")
        for r in results:
            if r.timeline is not None:
                s = r.summary
                plot_kv_timeline(
                    r.timeline,
                    out / "kv_timeline.png",
                    title=f"{s.policy} ({s.predictor}), qps {s.qps:g}, {config.trace_name}",
                )
                written.append("kv_timeline.png")
    console.print(f"wrote {escape(', '.join(str(out / w) for w in written))}")


def _run_engine(args: argparse.Namespace, config: BenchConfig) -> int:
    try:
        engine = importlib.import_module("adapters.vllm.cli")
    except ModuleNotFoundError as exc:
        raise ValueError(f"--engine needs the vllm adapter and its extra: {exc}") from None
    console = Console(width=200)
    summaries = engine.run_engine_bench(args, config, console)
    labels = [s.policy for s in summaries]
    baseline = args.baseline or ("stock" if "stock" in labels else None)
    console.print(results_table(summaries, baseline if baseline in labels else None))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(summaries, args.out / "results.csv", baseline)
    write_markdown(summaries, args.out / "results.md", baseline if baseline in labels else None)
    console.print(escape(f"wrote {args.out / 'results.csv'}, {args.out / 'results.md'}"))
    return 0
