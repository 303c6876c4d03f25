"""``lamps-agent bench``: policies × predictors × arrival rates on a trace, in the simulator.

Example::

    lamps-agent bench --trace multi-api --qps 1,2,3,4,5,6 --policies vllm,infercept,lamps \
        --preset a100-gptj6b --baseline infercept --out results/multi
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lamps_agent.bench.output import default_out_dir, prepare_out_dir
from lamps_agent.bench.plots import plot_kv_timeline, plot_latency_vs_qps
from lamps_agent.bench.report import (
    Baseline,
    results_table,
    write_csv,
    write_json,
    write_markdown,
)
from lamps_agent.bench.runner import RECOMMENDED_POLICY, BenchConfig, RunSpec, run_grid
from lamps_agent.metrics import RunResult, RunSummary
from lamps_agent.policies import POLICIES
from lamps_agent.predictors import PREDICTORS, make_predictor
from lamps_agent.presets import PRESETS, load_preset, parse_overrides
from lamps_agent.program import Program
from lamps_agent.registry import Registry
from lamps_agent.workloads import generate_programs, load_trace
from lamps_agent.workloads.infercept import BUILTIN_TRACES
from lamps_agent.workloads.longctx import KINDS as LONGCTX_KINDS
from lamps_agent.workloads.longctx import generate_longctx


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
        help=f"INFERCEPT-format trace file, a built-in: {', '.join(BUILTIN_TRACES)}, or a "
        "generated long-context agent workload: longctx (the mix) or longctx:KIND[,KIND] "
        f"({', '.join(LONGCTX_KINDS)}); its pool holds --num-programs programs (default 1000)",
    )
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic programs instead")
    p.add_argument(
        "--qps", default="1,2,3,4,5,6", help="comma-separated arrival rates (programs/s)"
    )
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
    p.add_argument(
        "--baseline",
        help="policy the reductions (Δ columns) are relative to; one of --policies (default: "
        "infercept if run, else the first policy; a run of one policy under several predictors "
        "compares with its oracle run)",
    )
    p.add_argument("--seed", type=int, default=0, help="arrivals and noisy-predictor seed")
    p.add_argument("--num-programs", type=int, help="sample this many programs with replacement")
    p.add_argument(
        "--duration", type=float, help="arrivals for this many seconds (with replacement)"
    )
    p.add_argument(
        "--starvation-threshold",
        default="100",
        help="LAMPS starvation bound in iterations, or 'off'",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="folder for CSV/JSON/PNG; one that holds an earlier run is refused without "
        "--overwrite (default: a new folder results/TRACE-YYYYMMDD-HHMMSS)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the earlier run's files in --out"
    )
    p.add_argument("--wide", action="store_true", help="all table columns (about 145 columns wide)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--timeline",
        metavar="POLICY@QPS",
        help="run whose KV memory over time is plotted; one of the runs (default: "
        f"{RECOMMENDED_POLICY} at the top qps, or the last policy if {RECOMMENDED_POLICY} is not run)",
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


def _names(text: str, flag: str, registry: Registry[Any], *, spec_args: bool = False) -> list[str]:
    """A comma-separated list of registered names (``name:arg`` with ``spec_args``): at least one,
    each known, none twice."""
    names = _split(text)
    if not names:
        raise ValueError(f"{flag}: give at least one, from: {', '.join(registry.names())}")
    for name in names:
        try:
            registry.get(name.partition(":")[0] if spec_args else name)  # lists the valid ones
        except KeyError as exc:
            raise ValueError(f"{flag}: {exc.args[0]}") from None
        if spec_args and ":" in name:
            try:
                make_predictor(name)  # checks the argument (noisy:PCT)
            except ValueError as exc:
                raise ValueError(f"{flag}: {name!r}: {exc}") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{flag}: {', '.join(twice)} listed twice")
    return names


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag}: {text!r} must be a positive number")
    return value


def _rates(text: str) -> list[float]:
    rates = [_number(item, "--qps") for item in _split(text)]
    if not rates:
        raise ValueError("--qps: give at least one positive rate, e.g. --qps 2,4,6")
    return rates


def _threshold(text: str) -> int | None:
    if text == "off":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"--starvation-threshold: expected an integer or 'off', got {text!r}"
        ) from None
    if value < 1:
        raise ValueError(f"--starvation-threshold: must be >= 1 or 'off', got {value}")
    return value


def _programs(args: argparse.Namespace) -> tuple[list[Program], str]:
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise ValueError("--synthetic: needs at least 1 program")
        return generate_programs(args.synthetic, seed=args.seed), f"synthetic-{args.synthetic}"
    if args.trace == "longctx" or args.trace.startswith("longctx:"):
        kinds = args.trace.partition(":")[2]
        pool = generate_longctx(args.num_programs or 1000, kinds=kinds or "mix", seed=args.seed)
        return pool, args.trace
    trace = load_trace(args.trace)
    # A built-in trace keeps its built-in name (not the name of the data file behind it).
    name = args.trace if args.trace in BUILTIN_TRACES else trace.name
    return list(trace.programs), name


def _timeline(
    args: argparse.Namespace, policies: list[str], predictors: list[str], qps: list[float]
) -> RunSpec | None:
    """The run whose KV memory over time is plotted: ``--timeline POLICY@QPS``, else the
    recommended policy (or the last one, if it is not run) at the top rate."""
    if args.no_plots:
        if args.timeline:
            raise ValueError("--timeline: nothing is plotted with --no-plots")
        return None
    if not args.timeline:
        policy = RECOMMENDED_POLICY if RECOMMENDED_POLICY in policies else policies[-1]
        return RunSpec(policy=policy, predictor=predictors[0], qps=max(qps))
    policy, _, rate = args.timeline.partition("@")
    if policy not in policies:
        raise ValueError(
            f"--timeline {args.timeline}: policy {policy!r} is not run; --policies: "
            f"{', '.join(policies)}"
        )
    at = _number(rate, "--timeline") if rate else max(qps)
    if at not in qps:
        raise ValueError(
            f"--timeline {args.timeline}: qps {at:g} is not run; --qps: "
            f"{', '.join(f'{q:g}' for q in qps)}"
        )
    return RunSpec(policy=policy, predictor=predictors[0], qps=at)


def build_config(args: argparse.Namespace) -> BenchConfig:
    """Every option checked, each error naming its flag, before anything is simulated."""
    policies = _names(args.policies, "--policies", POLICIES)
    predictors = _names(args.predictors, "--predictors", PREDICTORS, spec_args=True)
    qps = _rates(args.qps)
    threshold = _threshold(args.starvation_threshold)
    for flag, value in (("--num-programs", args.num_programs), ("--duration", args.duration)):
        if value is not None and value <= 0:
            raise ValueError(f"{flag}: must be positive, got {value}")
    preset = load_preset(
        args.preset, config_file=args.preset_file, overrides=parse_overrides(args.set)
    )
    timeline = _timeline(args, policies, predictors, qps)
    programs, name = _programs(args)
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


def choose_baseline(
    requested: str | None, policies: list[str], predictors: list[str]
) -> Baseline | None:
    """What the reductions compare against.

    ``--baseline POLICY`` must be one of the policies run.  By default: INFERCEPT if it runs,
    else the first policy, each row against it under the row's own predictor.  A run of one
    policy under several predictors (a robustness run) compares with that policy under the
    oracle predictor; with no oracle run there is nothing to compare with and no baseline.
    """
    if requested is not None and requested not in policies:
        raise ValueError(f"--baseline {requested}: not among --policies ({', '.join(policies)})")
    if len(policies) > 1:
        return Baseline(requested or ("infercept" if "infercept" in policies else policies[0]))
    if len(predictors) > 1 and "oracle" in predictors:
        return Baseline(policies[0], predictor="oracle")
    if requested is not None:
        raise ValueError(
            f"--baseline {requested}: the only policy run, with no oracle run to compare it with"
        )
    return None


def _table_console(wide: bool) -> Console:
    probe = Console()
    # Off a terminal (CI logs, pipes) rich would squeeze the table into 80 columns.
    return probe if probe.is_terminal else Console(width=200 if wide else 120)


def run_bench(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.engine:
        return _run_engine(args, config)
    baseline = choose_baseline(args.baseline, list(config.policies), list(config.predictors))
    args.out = prepare_out_dir(
        args.out or default_out_dir(config.trace_name), overwrite=args.overwrite
    )
    console = _table_console(args.wide)
    started = time.perf_counter()
    results = _simulate(config, quiet=args.quiet)
    elapsed = time.perf_counter() - started
    summaries = [r.summary for r in results]
    console.print(
        f"[bold]{escape(config.trace_name)}[/bold]: {len(config.programs)} programs, preset "
        f"{config.preset.name} ({config.preset.gpu_kv_tokens:,} KV tokens), seed {config.seed}; "
        f"{len(results)} runs in {elapsed:.1f} s"
    )
    console.print(results_table(summaries, baseline, wide=args.wide))
    _note_fallbacks(summaries, console)
    _write_outputs(args, config, results, baseline, console)
    return 0


def _simulate(config: BenchConfig, *, quiet: bool) -> list[RunResult]:
    results: list[RunResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("simulating", total=len(config.specs()))

        def done(spec: RunSpec, result: RunResult) -> None:
            results.append(result)
            progress.update(
                task, advance=1, description=f"{spec.policy} {spec.predictor} qps={spec.qps:g}"
            )

        run_grid(config, on_done=done)
    return results


def _note_fallbacks(summaries: list[RunSummary], console: Console) -> None:
    for label in sorted({s.predictor for s in summaries if "→" in s.predictor}):
        asked, _, ran = label.partition("→")
        console.print(
            f"note: predictor {asked} was unavailable (see the warning above); "
            f"the rows labelled {label} ran {ran}"
        )


def _write_outputs(
    args: argparse.Namespace,
    config: BenchConfig,
    results: list[RunResult],
    baseline: Baseline | None,
    console: Console,
) -> None:
    out: Path = args.out
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
        "baseline": dataclasses.asdict(baseline) if baseline else None,
    }
    write_json(summaries, out / "results.json", meta)
    write_markdown(summaries, out / "results.md", baseline)
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


def _check_reachable(url: str, flag: str, timeout: float = 3.0) -> None:
    """Fail in one line, before any work, when nothing listens at ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{flag} {url}: expected an http(s):// URL, or 'compare'")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(
            f"{flag} {url}: cannot connect ({exc.strerror or exc}); is the server running?"
        ) from None


def _engine_labels(args: argparse.Namespace) -> list[str]:
    if args.engine == "compare":
        return _split(args.engine_policies)
    return [args.engine_label]


def _run_engine(args: argparse.Namespace, config: BenchConfig) -> int:
    labels = _engine_labels(args)
    if not labels:
        raise ValueError("--engine-policies: give at least one")
    if args.baseline is not None and args.baseline not in labels:
        raise ValueError(
            f"--baseline {args.baseline}: not among the engine runs ({', '.join(labels)})"
        )
    if args.engine != "compare":
        _check_reachable(args.engine, "--engine")
    try:
        engine = importlib.import_module("adapters.vllm.cli")
    except ModuleNotFoundError as exc:
        raise ValueError(f"--engine needs the vllm adapter and its extra: {exc}") from None
    args.out = prepare_out_dir(
        args.out or default_out_dir(f"engine-{config.trace_name}"), overwrite=args.overwrite
    )
    console = _table_console(args.wide)
    summaries = engine.run_engine_bench(args, config, console)
    baseline = args.baseline or ("stock" if "stock" in labels else None)
    console.print(results_table(summaries, baseline, wide=args.wide))
    write_csv(summaries, args.out / "results.csv", baseline)
    write_markdown(summaries, args.out / "results.md", baseline)
    console.print(escape(f"wrote {args.out / 'results.csv'}, {args.out / 'results.md'}"))
    return 0
