"""Options the simulating commands share (``bench``, ``fleet``): the workload, the preset, the seed
and LAMPS' starvation bound, and the parsers of their values.

Each ``add_*`` function adds its options to a command's parser; each parser turns a value into
what the run needs, or raises ``ValueError`` naming the flag.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamps_agent.predictors import make_predictor
from lamps_agent.presets import PRESETS, Preset, load_preset, parse_overrides
from lamps_agent.program import Program
from lamps_agent.registry import Registry
from lamps_agent.workloads import generate_programs, load_trace
from lamps_agent.workloads.infercept import BUILTIN_TRACES, not_a_trace
from lamps_agent.workloads.longctx import KINDS as LONGCTX_KINDS
from lamps_agent.workloads.longctx import generate_longctx
from lamps_agent.workloads.scale import parse_scale, scale_tokens

DEFAULT_POOL = 1000  # programs in a generated long-context pool, unless the command sizes it


# -- adding the options --------------------------------------------------------------------------
def add_workload_options(p: argparse.ArgumentParser, *, pool_note: str = "") -> None:
    """``--trace`` or ``--synthetic`` (one of them); ``pool_note`` ends the ``--trace`` help
    with what sizes a generated pool."""
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--trace",
        default="multi-api",
        help=f"a trace file (docs/traces.md), a built-in: {', '.join(BUILTIN_TRACES)}, or a "
        "generated long-context agent workload: longctx (the mix) or longctx:KIND[,KIND] "
        f"({', '.join(LONGCTX_KINDS)})" + (f"; {pool_note}" if pool_note else ""),
    )
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic programs instead")


def add_preset_options(p: argparse.ArgumentParser) -> None:
    """``--preset``, ``--preset-file`` and ``--set KEY=VALUE`` overrides."""
    p.add_argument("--preset", default="a100-gptj6b", help=f"one of: {', '.join(PRESETS.names())}")
    p.add_argument("--preset-file", type=Path, help="TOML/JSON file of preset fields")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (gpu_kv_gb=26, cost.base_ms=12); repeatable",
    )


def add_seed_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="arrivals and noisy-predictor seed")


def add_starvation_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--starvation-threshold",
        default="100",
        help="LAMPS starvation bound in iterations, or 'off'",
    )


# -- reading them ---------------------------------------------------------------------------
def workload(
    args: argparse.Namespace, *, pool_size: int | None = None
) -> tuple[list[Program], str]:
    """The programs of ``--trace`` / ``--synthetic`` and the workload's name; a generated
    long-context pool holds ``pool_size`` programs (default :data:`DEFAULT_POOL`)."""
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise ValueError("--synthetic: needs at least 1 program")
        return generate_programs(args.synthetic, seed=args.seed), f"synthetic-{args.synthetic}"
    if args.trace == "longctx" or args.trace.startswith("longctx:"):
        kinds = args.trace.partition(":")[2]
        pool = generate_longctx(pool_size or DEFAULT_POOL, kinds=kinds or "mix", seed=args.seed)
        return pool, args.trace
    if args.trace not in BUILTIN_TRACES and not Path(args.trace).exists():
        builtins = [*BUILTIN_TRACES, "longctx", *(f"longctx:{kind}" for kind in LONGCTX_KINDS)]
        raise ValueError(f"--trace {not_a_trace(args.trace, builtins)}")
    trace = load_trace(args.trace)
    # A built-in trace keeps its built-in name (not the name of the data file behind it).
    name = args.trace if args.trace in BUILTIN_TRACES else trace.name
    return list(trace.programs), name


def scaled_workload(args: argparse.Namespace) -> tuple[list[Program], str]:
    """The workload's programs and its name, token counts scaled by ``--token-scale`` (the name
    then says so: ``longctx:coding-tok0.03125``)."""
    factor = parse_scale(args.token_scale, "--token-scale")
    pool = getattr(args, "pool", None)  # bench's --pool; else a fixed-size run's arrivals
    programs, name = workload(args, pool_size=pool or args.num_programs)
    if factor == 1:
        return programs, name
    return scale_tokens(programs, factor), f"{name}-tok{factor:g}"


def preset(args: argparse.Namespace) -> Preset:
    """The preset of ``--preset``, ``--preset-file`` and ``--set``."""
    return load_preset(
        args.preset, config_file=args.preset_file, overrides=parse_overrides(args.set)
    )


def starvation_threshold(text: str) -> int | None:
    """``--starvation-threshold``: iterations (>= 1), or ``off`` (None)."""
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


def split(text: str) -> list[str]:
    """The non-empty items of a comma-separated list."""
    return [item.strip() for item in text.split(",") if item.strip()]


def names(text: str, flag: str, registry: Registry[Any], *, spec_args: bool = False) -> list[str]:
    """A comma-separated list of registered names (``name:arg`` with ``spec_args``): at least one,
    each known, none twice."""
    items = split(text)
    if not items:
        raise ValueError(f"{flag}: give at least one, from: {', '.join(registry.names())}")
    for name in items:
        try:
            registry.get(name.partition(":")[0] if spec_args else name)  # lists the valid ones
        except KeyError as exc:
            raise ValueError(f"{flag}: {exc.args[0]}") from None
        if spec_args and ":" in name:
            try:
                make_predictor(name)  # checks the argument (noisy:PCT); the message names it
            except ValueError as exc:
                raise ValueError(f"{flag}: {exc}") from None
    twice = sorted({n for n in items if items.count(n) > 1})
    if twice:
        raise ValueError(f"{flag}: {', '.join(twice)} listed twice")
    return items


def positive_number(text: str, flag: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag}: {text!r} must be a positive number")
    return value


def policy_options(
    specs: Sequence[str], labels: Sequence[str], *, excluded: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """``--policy-options LABEL=JSON`` → constructor options by label (a policy of the run, or a
    server of a comparison); each JSON an object, no label twice, none of ``excluded``."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        label, eq, text = spec.partition("=")
        label = label.strip()
        if not eq or label not in labels or label in excluded:
            valid = ", ".join(x for x in labels if x not in excluded)
            raise ValueError(
                f"--policy-options {spec!r}: expected LABEL=JSON, LABEL one of {valid}"
            )
        if label in out:
            raise ValueError(f"--policy-options: {label} given twice")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--policy-options {label}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"--policy-options {label}: expected a JSON object")
        out[label] = value
    return out
