"""``lamps-agent bench``: policies × predictors × arrival rates on a trace, in the simulator.

Example::

    lamps-agent bench --trace multi-api --qps 1,2,3,4,5,6 --policies vllm,infercept,lamps \
        --preset a100-gptj6b --baseline infercept --out results/multi
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from lamps_agent.bench.adversary import LIE_KINDS, Adversary, lie_kind
from lamps_agent.bench.adversary_table import (
    adversary_markdown,
    adversary_rows,
    adversary_table,
)
from lamps_agent.bench.aggregate import Row, baseline_rows, group, stability_notes
from lamps_agent.bench.bound import ContentionFreeBound
from lamps_agent.bench.capacity import search
from lamps_agent.bench.capacity_bound import CapacityBound, capacity_bound
from lamps_agent.bench.output import default_out_dir, prepare_out_dir
from lamps_agent.bench.plots import plot_kv_timeline, plot_latency_vs_qps
from lamps_agent.bench.protocol import WARMUP_FACTOR, WINDOW_FACTOR, default_window
from lamps_agent.bench.report import (
    Baseline,
    write_csv,
    write_json,
)
from lamps_agent.bench.runner import (
    RECOMMENDED_POLICY,
    BenchConfig,
    Point,
    RunSpec,
    make_bound,
    run_point,
)
from lamps_agent.bench.tables import (
    Capacity,
    capacity_markdown,
    capacity_table,
    rows_markdown,
    rows_table,
)
from lamps_agent.cli import options
from lamps_agent.cli.progress import RunProgress
from lamps_agent.metrics import RunSummary
from lamps_agent.policies import POLICIES
from lamps_agent.predictors import PREDICTORS


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="simulate scheduling policies on an agent trace",
        description="Simulate scheduling policies on an agent trace and compare them.",
    )
    options.add_workload_options(
        p, pool_note="its pool holds --pool programs (default: --num-programs, else 1000)"
    )
    p.add_argument(
        "--pool",
        type=int,
        metavar="N",
        help="distinct programs a generated long-context workload draws from (default 1000)",
    )
    p.add_argument(
        "--qps", default="1,2,3,4,5,6", help="comma-separated arrival rates (programs/s)"
    )
    p.add_argument(
        "--policies",
        default="vllm,infercept,lamps,continuum,thunderagent",
        help=f"comma-separated, from: {', '.join(POLICIES.names())}",
    )
    p.add_argument(
        "--predictors",
        "--predictor",
        default="oracle",
        help=f"comma-separated, from: {', '.join(PREDICTORS.names())} (noisy:PCT, e.g. noisy:40)",
    )
    options.add_preset_options(p)
    p.add_argument(
        "--baseline",
        help="policy the reductions (Δ columns) are relative to; one of --policies (default: "
        "infercept if run, else the first policy; a run of one policy under several predictors "
        "compares with its oracle run)",
    )
    p.add_argument(
        "--token-scale",
        default="1",
        metavar="FACTOR",
        help="multiply every token count of the programs (first prompt, outputs, tool returns) "
        "by this, e.g. 1/32, so a long-context workload fits a small engine (the tiny CPU "
        "model); the simulator and --engine replay the same scaled programs (default: 1)",
    )
    options.add_seed_option(p)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="repeat every point with seeds SEED..SEED+N-1; tables show the median and the "
        "range, and a difference within the range is reported as none (≈)",
    )
    p.add_argument(
        "--num-programs",
        type=int,
        help="instead of the steady-state window: this many arrivals (sampled with replacement)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="arrival window, warm-up included (programs sampled with replacement); default: "
        f"the warm-up plus {WINDOW_FACTOR:g}× the trace's unloaded mean E2E",
    )
    p.add_argument(
        "--warmup",
        type=float,
        metavar="SECONDS",
        help="first part of the window, simulated but not measured (default: "
        f"{WARMUP_FACTOR:g}× the unloaded mean E2E; 0 with --num-programs)",
    )
    _add_adversary_options(p)
    cap = p.add_argument_group("capacity", "lead with the highest stable rate of each policy")
    cap.add_argument(
        "--capacity",
        action="store_true",
        help="search each policy's highest stable qps (bracket, then bisection) before the grid",
    )
    cap.add_argument(
        "--p99-target",
        type=float,
        metavar="SECONDS",
        help="with --capacity: also the highest qps at which P99 E2E stays within this",
    )
    cap.add_argument(
        "--capacity-start",
        type=float,
        metavar="QPS",
        help="rate the search starts from (default: the highest --qps)",
    )
    cap.add_argument(
        "--capacity-resolution",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="stop bisecting when the bracket is narrower than this fraction of its low end",
    )
    cap.add_argument(
        "--capacity-max",
        type=float,
        default=64.0,
        metavar="QPS",
        help="highest rate the search tries",
    )
    options.add_starvation_option(p)
    p.add_argument(
        "--out",
        type=Path,
        help="folder for CSV/JSON/PNG; one that holds an earlier run is refused without "
        "--overwrite (default: a new folder results/TRACE-YYYYMMDD-HHMMSS)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the earlier run's files in --out"
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="every table column at full precision (the default fits 80 columns)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--timeline",
        metavar="POLICY@QPS",
        help="run whose KV memory over time is plotted; one of the runs (default: "
        f"{RECOMMENDED_POLICY} at the top qps, or the last policy if {RECOMMENDED_POLICY} is not run)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, else a line per run)",
    )
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
    eng.add_argument(
        "--engine-policies",
        default="stock,noop,lamps,infercept,continuum,thunderagent",
        help="servers for compare: stock (vLLM's scheduler), noop (the plug-in in stock order, "
        "no pins; always added as the control), or any policy",
    )
    eng.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="replays per server, interleaved (A B C A B C …); tables show median and range",
    )
    eng.add_argument(
        "--reserved-cpus",
        type=int,
        default=1,
        metavar="N",
        help="VLLM_CPU_NUM_OF_RESERVED_CPU for every compare server (vLLM-CPU otherwise "
        "reserves one more core for a server with a KV connector)",
    )
    eng.add_argument("--engine-label", default="engine", help="policy label of a --engine URL run")
    eng.add_argument("--time-scale", type=float, default=1.0, help="multiply tool durations")
    eng.add_argument("--no-hints", action="store_true", help="send no lamps hints")
    eng.add_argument(
        "--swap",
        action="store_true",
        help="every compare server loads the host-memory swap connector (stock too, where it "
        "stays idle), so all are configured alike",
    )
    eng.add_argument(
        "--policy-options",
        action="append",
        metavar="LABEL=JSON",
        help="constructor options for one policy of the run (simulator) or one compare "
        "server's policy, e.g. program='{\"load_window_s\": 6}' (repeatable; not for stock)",
    )
    eng.add_argument(
        "--unloaded",
        action="store_true",
        help="after the rounds, replay each distinct program alone on the stock server (else the "
        "first) and print the unloaded mean and P99 E2E beside the loaded P99 (unloaded.json)",
    )
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


def _add_adversary_options(p: argparse.ArgumentParser) -> None:
    adv = p.add_argument_group(
        "adversary", "programs that lie in their hints; tenants, one bursting (issue 23)"
    )
    adv.add_argument(
        "--lies",
        default="none",
        help=f"comma-separated lies to run, each against the same liars: {', '.join(LIE_KINDS)} "
        "(none: the all-honest run the table compares with; add it to get the ratios)",
    )
    adv.add_argument(
        "--liar-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of the arrivals that lie (drawn per arrival from the seed)",
    )
    adv.add_argument("--tenants", type=int, default=1, metavar="N", help="tenants t0..tN-1")
    adv.add_argument(
        "--liar-tenants",
        type=int,
        default=0,
        metavar="K",
        help="tenants t0..tK-1 lie in every program (lying clients; with --tenants)",
    )
    adv.add_argument(
        "--burst-tenant", type=int, metavar="K", help="tenant K bursts in the middle third"
    )
    adv.add_argument(
        "--burst-factor",
        type=float,
        default=10.0,
        metavar="F",
        help="the bursting tenant sends F times its share of the rate (default 10)",
    )
    adv.add_argument(
        "--calibrate",
        choices=("auto", "on", "off"),
        default="auto",
        help="discount each source's hints by its claims against its behaviour "
        "(lamps_agent.predictors.calibrated); auto: on when hints come from clients "
        "(--liar-fraction, --liar-tenants or --tenants)",
    )
    adv.add_argument(
        "--fair-share",
        choices=("on", "off"),
        default="on",
        help="no tenant admitted past its share of KV blocks and seats while another waits "
        "(lamps_agent.scheduler.fair_share; no change with one tenant)",
    )
    adv.add_argument(
        "--tenant-weights",
        default="",
        metavar="T=W,...",
        help="the tenants' weights in the fair share, e.g. t0=3,t1=1 (1 for a tenant not named)",
    )


def _adversary(args: argparse.Namespace) -> tuple[Adversary, list[str], bool]:
    lies: list[str] = [lie_kind(t.strip()) for t in args.lies.split(",") if t.strip()]
    if not lies:
        raise ValueError("--lies: give at least one (none, short, final, hog, spoof)")
    adversary = Adversary(
        liar_fraction=args.liar_fraction,
        tenants=args.tenants,
        liar_tenants=args.liar_tenants,
        burst_tenant=args.burst_tenant,
        burst_factor=args.burst_factor if args.burst_tenant is not None else 1.0,
    )
    if set(lies) != {"none"} and not adversary.lies:
        raise ValueError("--lies: nobody lies without --liar-fraction or --liar-tenants")
    calibrate = bool(args.calibrate == "on" or (args.calibrate == "auto" and adversary.active))
    return adversary, lies, calibrate


def tenant_weights(text: str, tenants: int) -> dict[str, float]:
    """``t0=3,t1=1`` for tenants ``t0..t{tenants-1}``."""
    weights: dict[str, float] = {}
    for item in options.split(text):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--tenant-weights: {item!r} is not TENANT=WEIGHT (t0=3)")
        known = [f"t{i}" for i in range(tenants)]
        if name not in known:
            raise ValueError(
                f"--tenant-weights: no tenant {name!r} (with --tenants {tenants}: "
                f"{', '.join(known)})"
            )
        weights[name] = options.positive_number(value, f"--tenant-weights {name}")
    return weights


def _rates(text: str) -> list[float]:
    rates = [options.positive_number(item, "--qps") for item in options.split(text)]
    if not rates:
        raise ValueError("--qps: give at least one positive rate, e.g. --qps 2,4,6")
    return rates


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
        return RunSpec(policy=policy, predictor=predictors[0], qps=max(qps), seed=args.seed)
    policy, _, rate = args.timeline.partition("@")
    if policy not in policies:
        raise ValueError(
            f"--timeline {args.timeline}: policy {policy!r} is not run; --policies: "
            f"{', '.join(policies)}"
        )
    at = options.positive_number(rate, "--timeline") if rate else max(qps)
    if at not in qps:
        raise ValueError(
            f"--timeline {args.timeline}: qps {at:g} is not run; --qps: "
            f"{', '.join(f'{q:g}' for q in qps)}"
        )
    return RunSpec(policy=policy, predictor=predictors[0], qps=at, seed=args.seed)


def build_config(args: argparse.Namespace) -> BenchConfig:
    """Every option checked, each error naming its flag, before anything is simulated.  The
    steady-state window is set later (:func:`with_window`): it needs the programs' bound."""
    policies = options.names(args.policies, "--policies", POLICIES)
    predictors = options.names(args.predictors, "--predictors", PREDICTORS, spec_args=True)
    qps = _rates(args.qps)
    threshold = options.starvation_threshold(args.starvation_threshold)
    for flag, value in (
        ("--num-programs", args.num_programs),
        ("--pool", args.pool),
        ("--duration", args.duration),
        ("--seeds", args.seeds),
        ("--p99-target", args.p99_target),
        ("--capacity-start", args.capacity_start),
        ("--capacity-max", args.capacity_max),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{flag}: must be positive, got {value}")
    if args.warmup is not None and not (math.isfinite(args.warmup) and args.warmup >= 0):
        raise ValueError(f"--warmup: must be >= 0, got {args.warmup}")
    if args.pool is not None and not (args.trace == "longctx" or args.trace.startswith("longctx:")):
        raise ValueError("--pool: only for a generated long-context workload (--trace longctx…)")
    if args.num_programs is not None and args.duration is not None:
        raise ValueError("--num-programs and --duration: give one (programs or seconds)")
    if args.duration is not None and args.warmup is not None and args.warmup >= args.duration:
        raise ValueError(f"--warmup {args.warmup:g}: must be shorter than --duration")
    if not 0 < args.capacity_resolution < 1:
        raise ValueError(
            f"--capacity-resolution: must be in (0, 1), got {args.capacity_resolution}"
        )
    if not args.capacity:
        for flag in ("p99_target", "capacity_start"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')}: only with --capacity")
    preset = options.preset(args)
    timeline = _timeline(args, policies, predictors, qps)
    programs, name = options.scaled_workload(args)
    adversary, lies, calibrate = _adversary(args)
    return BenchConfig(
        programs=programs,
        trace_name=name,
        preset=preset,
        qps=qps,
        policies=policies,
        predictors=predictors,
        seed=args.seed,
        num_seeds=args.seeds,
        num_programs=args.num_programs,
        duration=args.duration,
        warmup=args.warmup or 0.0,
        policy_options={"starvation_threshold": threshold},
        # with --engine the labels are servers, checked by the engine's own parser
        options_by_policy=(
            {} if args.engine else options.policy_options(args.policy_options or (), policies)
        ),
        timeline_for=timeline,
        adversary=adversary,
        lies=lies,
        fair_share=args.fair_share == "on",
        tenant_weights=tenant_weights(args.tenant_weights, args.tenants),
        calibrate=calibrate,
    )


def with_window(
    config: BenchConfig, args: argparse.Namespace, bound: ContentionFreeBound
) -> tuple[BenchConfig, float]:
    """The steady-state window (unless the run is sized in programs), and the trace's unloaded
    mean E2E it derives from (every distinct program alone, weighted as sampling draws them)."""
    unloaded = bound.mean_e2e(config.programs)
    if config.num_programs is not None:
        return config, unloaded
    window = default_window(unloaded, duration=args.duration, warmup=args.warmup)
    return dataclasses.replace(config, duration=window.end, warmup=window.warmup), unloaded


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


def table_console(wide: bool) -> Console:
    # Tables fit the width; prose lines are left whole (soft wrap), so a log line greps whole.
    probe = Console(soft_wrap=True)
    # Off a terminal (CI logs, pipes): 80 columns, which the default table fits; --wide's table
    # would be squeezed into them, so it gets the width it needs.
    return probe if probe.is_terminal else Console(width=200 if wide else 80, soft_wrap=True)


def run_bench(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.engine:
        return _run_engine(args, config)
    baseline = choose_baseline(args.baseline, list(config.policies), list(config.predictors))
    args.out = prepare_out_dir(
        args.out or default_out_dir(config.trace_name), overwrite=args.overwrite
    )
    console = table_console(args.wide)
    started = time.perf_counter()
    bound = make_bound(config)
    if not args.quiet:  # the window needs the bound: seconds of simulation before the first run
        print(
            f"computing the contention-free bound: {len(config.programs)} programs, each alone",
            file=sys.stderr,
            flush=True,
        )
    config, unloaded = with_window(config, args, bound)
    cache: dict[RunSpec, Point] = {}
    caps = _capacities(args, config, bound, cache) if args.capacity else []
    points = _simulate(config, bound, cache, quiet=args.quiet)
    elapsed = time.perf_counter() - started
    _print_header(console, config, points, unloaded, len(cache), elapsed)
    limit = capacity_bound(config.programs, config.preset) if caps else None
    if caps:
        console.print(capacity_table(caps, p99_target=args.p99_target, bound=limit))
    rows = _rows(points)
    console.print(rows_table(rows, baseline, wide=args.wide))
    bases = baseline_rows(rows, baseline.policy, baseline.predictor) if baseline else {}
    for note in stability_notes(rows, bases):
        console.print(escape(note))
    _note_fallbacks([p.summary for p in points], console)
    if config.adversary.active:
        adversarial = adversary_rows(points)
        console.print(adversary_table(adversarial, wide=args.wide))
        (args.out / "adversary.md").write_text(adversary_markdown(adversarial))
    _write_outputs(args, config, points, rows, caps, baseline, unloaded, console, limit)
    return 0


def _rows(points: list[Point]) -> list[Row]:
    return group(
        [p.summary for p in points],
        stable=[p.stability.stable for p in points],
        reasons=[_reason(p) for p in points],
        alone=[p.alone_e2e for p in points],
        simulated=[p.simulated for p in points],
        measured=[p.measured for p in points],
    )


def _print_header(
    console: Console,
    config: BenchConfig,
    points: list[Point],
    unloaded: float,
    runs: int,
    elapsed: float,
) -> None:
    w = points[0].window
    per_qps: dict[float, tuple[list[int], list[int]]] = {}
    for p in points:
        sims, meas = per_qps.setdefault(p.spec.qps, ([], []))
        sims.append(p.simulated)
        meas.append(p.measured)
    counts = ", ".join(
        f"qps {q:g}: {int(statistics.median(s)):,} simulated / {int(statistics.median(m)):,} "
        "measured"
        for q, (s, m) in per_qps.items()
    )
    mode = (
        f"{config.num_programs:,} arrivals per run"
        if config.num_programs is not None
        else f"arrivals for {w.end:g} s, the first {w.warmup:g} s warm-up (not measured), "
        f"measured window {w.measured_length:g} s = {w.measured_length / unloaded:.1f}× the "
        f"unloaded mean E2E ({unloaded:.2f} s)"
    )
    seeds = ", ".join(str(s) for s in config.seeds)
    console.print(
        f"[bold]{escape(config.trace_name)}[/bold]: {len(config.programs)} distinct programs, "
        f"preset {config.preset.name} ({config.preset.gpu_kv_tokens:,} KV tokens), "
        f"seed{'s' if config.num_seeds > 1 else ''} {seeds}; {escape(mode)}; every arrival "
        f"runs to completion (drain); {escape(counts)} (per run; median over seeds); "
        f"{runs} simulations in {elapsed:.1f} s"
    )
    for policy, given in config.options_by_policy.items():
        console.print(f"{policy} ran with --policy-options {escape(json.dumps(given))}")
    if config.num_seeds == 1:
        console.print("one seed: no range, so no difference is tested against noise (--seeds 3)")


def _reason(p: Point) -> str:
    """Why ``p`` is unstable, for the notes under the table (empty when it is stable)."""
    if p.stability.stable:
        return ""
    tolerance = p.stability.threshold
    told = f" (tolerance {tolerance:.2f} s)" if math.isfinite(tolerance) else ""
    return f"seed {p.spec.seed}: {p.stability.reason}{told}"


def _evaluate(
    config: BenchConfig, bound: ContentionFreeBound, cache: dict[RunSpec, Point], spec: RunSpec
) -> Point:
    point = cache.get(spec)
    if point is None:
        point = run_point(config, spec, bound)
        cache[spec] = point
    return point


def _capacities(
    args: argparse.Namespace,
    config: BenchConfig,
    bound: ContentionFreeBound,
    cache: dict[RunSpec, Point],
) -> list[Capacity]:
    """Per policy (first predictor): the highest stable qps, and with ``--p99-target`` the highest
    qps whose P99 E2E (median over seeds) is within it.  Stable means stable on every seed."""
    predictor = config.predictors[0]
    start = args.capacity_start or max(config.qps)
    caps = []
    for policy in config.policies:

        def points(q: float, policy: str = policy) -> list[Point]:
            specs = [
                RunSpec(policy=policy, predictor=predictor, qps=q, seed=s) for s in config.seeds
            ]
            out = [_evaluate(config, bound, cache, spec) for spec in specs]
            if not args.quiet:
                verdicts = sorted({p.stability.verdict for p in out})
                print(f"capacity: {policy} qps {q:.4g}: {', '.join(verdicts)}", file=sys.stderr,
                      flush=True)  # fmt: skip
            return out

        def stable(q: float) -> bool:
            return all(p.stability.sustained for p in points(q))

        def within(q: float) -> bool:
            pts = points(q)
            p99 = statistics.median(p.summary.e2e.p99 for p in pts)
            return all(p.stability.sustained for p in pts) and p99 <= args.p99_target

        before = len(cache)
        search_args = {
            "start": start,
            "resolution": args.capacity_resolution,
            "max_qps": args.capacity_max,
        }
        found = search(stable, **search_args)
        p99 = None
        if args.p99_target is not None:
            # P99 within the target implies stable: search below the stable bracket's top
            # (already simulated, so bracketing costs nothing new)
            top = found.high if found.high is not None else args.capacity_max
            p99 = search(within, **{**search_args, "start": found.low or start, "max_qps": top})
        caps.append(
            Capacity(
                policy=policy,
                stable=found,
                p99=p99,
                evaluations=(len(cache) - before) // config.num_seeds,
            )
        )
    return caps


def _simulate(
    config: BenchConfig, bound: ContentionFreeBound, cache: dict[RunSpec, Point], *, quiet: bool
) -> list[Point]:
    points: list[Point] = []
    specs = config.specs()
    with RunProgress(len(specs), quiet=quiet) as progress:
        for spec in specs:
            timeline = spec == config.timeline_for
            if timeline:  # the run whose KV use is plotted records its timeline
                cache.pop(spec, None)
                point = run_point(dataclasses.replace(config, timeline_for=spec), spec, bound)
                cache[spec] = point
            else:
                point = _evaluate(config, bound, cache, spec)
            points.append(point)
            verdict = point.stability.verdict
            progress.finished(
                f"{spec.policy} {spec.predictor} qps={spec.qps:g} seed={spec.seed}"
                + ("" if spec.lie == "none" else f" lie={spec.lie}"),
                f"E2E mean {point.summary.e2e.mean:.2f} s, {verdict}",
            )
    return points


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
    points: list[Point],
    rows: list[Row],
    caps: list[Capacity],
    baseline: Baseline | None,
    unloaded: float,
    console: Console,
    limit: CapacityBound | None = None,
) -> None:
    out: Path = args.out
    summaries = [p.summary for p in points]
    write_csv(summaries, out / "results.csv", baseline, extra=[_point_fields(p) for p in points])
    window = points[0].window
    meta: dict[str, Any] = {
        "trace": config.trace_name,
        "programs": len(config.programs),
        "preset": dataclasses.asdict(config.preset),
        "overrides": args.set,
        "qps": list(config.qps),
        "policies": list(config.policies),
        "predictors": list(config.predictors),
        "seeds": config.seeds,
        "window": {"warmup_s": window.warmup, "end_s": window.end},
        "num_programs": config.num_programs,
        "unloaded_mean_e2e_s": unloaded,
        "baseline": dataclasses.asdict(baseline) if baseline else None,
        "capacity": [
            {
                "policy": c.policy,
                "stable_low": c.stable.low,
                "stable_high": c.stable.high,
                "p99_target_s": args.p99_target,
                "p99_low": c.p99.low if c.p99 else None,
                "p99_high": c.p99.high if c.p99 else None,
                "tried": [list(t) for t in c.stable.tried],
            }
            for c in caps
        ],
        "capacity_bound": (
            {**dataclasses.asdict(limit), "bound": limit.bound, "limit": limit.limit}
            if limit
            else None
        ),
    }
    # results.json also says where new programs waited for their first token (whole run)
    write_json(
        summaries,
        out / "results.json",
        meta,
        extra=[
            {**_point_fields(p), "first_turn_waits": dict(p.result.first_turn_waits or {})}
            for p in points
        ],
    )
    md = rows_markdown(rows, baseline)
    if caps:
        md = capacity_markdown(caps, p99_target=args.p99_target, bound=limit) + "\n" + md
    (out / "results.md").write_text(md)
    written = ["results.csv", "results.json", "results.md"]
    if not args.no_plots:
        first = [p for p in points if p.spec.seed == config.seed]
        plot_latency_vs_qps(
            [p.summary for p in first],
            out / "latency_vs_qps.png",
            title=config.trace_name,
            unstable={(r.policy, r.predictor, r.qps) for r in rows if r.stable is False},
        )
        written.append("latency_vs_qps.png")
        for p in first:
            if p.result.timeline is not None:
                s = p.summary
                plot_kv_timeline(
                    p.result.timeline,
                    out / "kv_timeline.png",
                    title=f"{s.policy} ({s.predictor}), qps {s.qps:g}, {config.trace_name}",
                )
                written.append("kv_timeline.png")
    console.print(f"wrote {escape(', '.join(str(out / w) for w in written))}")


def _point_fields(p: Point) -> dict[str, Any]:
    return {
        "stable": p.stability.stable,
        "stability_first_third_engine_s": p.stability.first_engine_mean,
        "stability_last_third_engine_s": p.stability.last_engine_mean,
        "stability_tolerance_s": p.stability.threshold,
        "stability_batches_per_third": p.stability.batches,
        "alone_e2e_mean_s": p.alone_e2e,
        "programs_simulated": p.simulated,
        "programs_measured": p.measured,
        "warmup_s": p.window.warmup,
        "window_end_s": p.window.end,
    }


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


def _engine_labels(args: argparse.Namespace, engine: Any) -> list[str]:
    if args.engine != "compare":
        return [args.engine_label]
    labels: list[str] = engine.compare_labels(args.engine_policies)
    for label in labels:
        if label not in (engine.STOCK, engine.NOOP) and label not in POLICIES.names():
            raise ValueError(
                f"--engine-policies: unknown server {label!r}; valid: {engine.STOCK}, "
                f"{engine.NOOP}, " + ", ".join(POLICIES.names())
            )
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"--engine-policies: {', '.join(twice)} listed twice")
    return labels


def _run_engine(args: argparse.Namespace, config: BenchConfig) -> int:
    if args.rounds < 1:
        raise ValueError(f"--rounds: must be >= 1, got {args.rounds}")
    if args.reserved_cpus is not None and args.reserved_cpus < 0:
        raise ValueError(f"--reserved-cpus: must be >= 0, got {args.reserved_cpus}")
    try:
        engine = importlib.import_module("adapters.vllm.tools.cli")
    except ModuleNotFoundError as exc:
        raise ValueError(f"--engine needs the vllm adapter and its extra: {exc}") from None
    labels = _engine_labels(args, engine)
    if args.baseline is not None and args.baseline not in labels:
        raise ValueError(
            f"--baseline {args.baseline}: not among the engine runs ({', '.join(labels)})"
        )
    if args.engine != "compare":
        _check_reachable(args.engine, "--engine")
    args.out = prepare_out_dir(
        args.out or default_out_dir(f"engine-{config.trace_name}"), overwrite=args.overwrite
    )
    console = table_console(args.wide)
    summaries = engine.run_engine_bench(args, config, console)
    name = args.baseline or (engine.STOCK if engine.STOCK in labels else None)
    baseline = Baseline(name) if name else None
    rows = group(summaries, measured=[s.num_requests for s in summaries])
    console.print(
        f"{len(summaries)} replays: {args.rounds} round{'s' if args.rounds > 1 else ''} per "
        "server, interleaved; median (range) over rounds"
    )
    console.print(rows_table(rows, baseline, wide=args.wide, repeats="rounds"))
    write_csv(summaries, args.out / "results.csv", baseline)
    (args.out / "results.md").write_text(rows_markdown(rows, baseline))
    console.print(escape(f"wrote {args.out / 'results.csv'}, {args.out / 'results.md'}"))
    return 0
