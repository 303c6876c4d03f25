"""``lamps-agent fleet``: several simulated replicas behind a routing policy, on one workload.

Example::

    lamps-agent fleet --trace multi-api --preset h100-llama3-8b --replicas 1,4,16 \
        --routing round-robin,session-affinity --qps-per-replica 6 --duration 120

Each fleet of N replicas receives programs at N × ``--qps-per-replica`` for ``--duration``
seconds; the table shows what routing costs or buys: latency, recomputed tokens, session moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lamps_agent.bench.fleet import FleetConfig, FleetRow, FleetSpec, run_fleet
from lamps_agent.cli import options
from lamps_agent.policies import POLICIES
from lamps_agent.predictors import PREDICTORS
from lamps_agent.sim.routing import ROUTERS


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fleet",
        help="simulate several replicas behind a routing policy",
        description="Simulate N replicas of one engine behind a routing policy: what routing "
        "costs or buys (latency, recomputed KV, session moves) before buying GPUs.",
    )
    options.add_workload_options(p)
    p.add_argument("--replicas", default="1,4", help="comma-separated fleet sizes")
    p.add_argument(
        "--routing",
        default=",".join(ROUTERS.names()),
        help=f"comma-separated, from: {', '.join(ROUTERS.names())}",
    )
    p.add_argument(
        "--qps-per-replica",
        default="4",
        help="comma-separated arrival rates per replica (programs/s); the fleet receives N × this",
    )
    p.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals")
    p.add_argument("--policy", default="lamps", help=f"one of: {', '.join(POLICIES.names())}")
    p.add_argument("--predictor", default="oracle", help=f"one of: {', '.join(PREDICTORS.names())}")
    options.add_preset_options(p)
    p.add_argument(
        "--spill-threshold",
        type=float,
        default=0.1,
        help="affinity-spill: move a turn when its home replica has more than this fraction of "
        "one replica's KV capacity in context tokens in flight beyond the least loaded replica",
    )
    options.add_seed_option(p)
    options.add_starvation_option(p)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(handler=run_fleet_command)


def _sizes(text: str) -> list[int]:
    sizes = []
    for item in options.split(text):
        try:
            n = int(item)
        except ValueError:
            raise ValueError(f"--replicas: {item!r} is not a whole number") from None
        if n < 1:
            raise ValueError(f"--replicas: {n} must be at least 1")
        sizes.append(n)
    if not sizes:
        raise ValueError("--replicas: give at least one fleet size, e.g. --replicas 1,4,16")
    return sizes


def _specs(args: argparse.Namespace) -> list[FleetSpec]:
    sizes = _sizes(args.replicas)
    routings = options.names(args.routing, "--routing", ROUTERS)
    rates = [
        options.positive_number(q, "--qps-per-replica") for q in options.split(args.qps_per_replica)
    ]
    if not rates:
        raise ValueError("--qps-per-replica: give at least one positive rate")
    return [
        FleetSpec(replicas=n, routing=r, qps_per_replica=q)
        for q in rates
        for n in sizes
        for r in routings
    ]


def build_config(args: argparse.Namespace) -> FleetConfig:
    """Every option checked, each error naming its flag, before anything is simulated."""
    for flag, value, registry, spec_args in (
        ("--policy", args.policy, POLICIES, False),
        ("--predictor", args.predictor, PREDICTORS, True),
    ):
        if len(options.names(value, flag, registry, spec_args=spec_args)) != 1:
            raise ValueError(f"{flag}: give one (a fleet runs one policy on every replica)")
    if not args.duration > 0:
        raise ValueError(f"--duration: must be positive, got {args.duration}")
    if not args.spill_threshold >= 0:
        raise ValueError(f"--spill-threshold: must be >= 0, got {args.spill_threshold}")
    preset = options.preset(args)
    programs, name = options.workload(args)  # a generated pool keeps its default size
    return FleetConfig(
        programs=programs,
        trace_name=name,
        preset=preset,
        duration=args.duration,
        policy=args.policy,
        predictor=args.predictor,
        seed=args.seed,
        spill_threshold=args.spill_threshold,
        policy_options={
            "starvation_threshold": options.starvation_threshold(args.starvation_threshold)
        },
    )


def fleet_table(rows: list[FleetRow]) -> Table:
    table = Table(show_lines=False)
    for col in (
        "replicas",
        "routing",
        "qps/replica",
        "programs",
        "E2E mean s",
        "E2E P99 s",
        "engine mean s",
        "recomputed tok",
        "released by moves",
        "moves / turns",
        "busiest busy",
    ):
        if col == "routing":
            table.add_column(col, no_wrap=True, min_width=16)
        else:
            table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r.replicas),
            r.routing,
            f"{r.qps_per_replica:g}",
            f"{r.programs:,}" + (f" (+{r.rejected} rejected)" if r.rejected else ""),
            f"{r.e2e_mean:.2f}",
            f"{r.e2e_p99:.2f}",
            f"{r.engine_mean:.3f}",
            f"{r.recomputed_tokens:,}",
            f"{r.moved_tokens:,}",
            f"{r.moves:,} / {r.turns:,}",
            f"{r.busiest_replica_busy:.0%}",
        )
    return table


def run_fleet_command(args: argparse.Namespace) -> int:
    specs = _specs(args)
    config = build_config(args)
    console = Console() if Console().is_terminal else Console(width=180)
    rows = []
    started = time.perf_counter()
    for spec in specs:
        rows.append(FleetRow.of(spec, run_fleet(config, spec)))
    elapsed = time.perf_counter() - started
    console.print(
        f"[bold]{escape(config.trace_name)}[/bold]: {len(config.programs)} programs, policy "
        f"{config.policy}, preset {config.preset.name} ({config.preset.gpu_kv_tokens:,} KV tokens "
        f"per replica), {config.duration:g} s of arrivals, seed {config.seed}; {len(rows)} runs "
        f"in {elapsed:.1f} s"
    )
    console.print(fleet_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n")
        console.print(f"wrote {escape(str(args.json))}")
    return 0
