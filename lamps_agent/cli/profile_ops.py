"""``lamps-agent profile-ops``: an operator-level profile (Vidur's method) composed into a preset.

Times one layer's operators with torch on the device present (:mod:`lamps_agent.opprofile`),
writes the operator table (the format of ``lamps_agent/data/gpu``), composes it into cost-model
terms (:mod:`lamps_agent.opcost`) and writes a preset file that builds on a registered preset,
keeping its per-step base and capacity.  ``--from-table`` composes an existing table instead.
torch is imported only when timing.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lamps_agent.opcost import SHIPPED_TABLES, OperatorTable, OperatorTerms, compose, preset_fields
from lamps_agent.opprofile import SHAPES, Grid, LayerShape, profile_operators
from lamps_agent.presets import load_preset, write_preset_file

_DEFAULT = Grid()


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile-ops",
        help="time one layer's operators with torch and compose them into a preset",
        description="Operator-level profile (Vidur's method): time one model-shaped layer's "
        "GEMMs, LM head, decode and prefill attention and host<->device KV copies with torch on "
        "the device present (CUDA when there is one, else the CPU), write the operator table "
        "and a preset file whose per-token, decode, KV-read, attention and copy terms are "
        "composed from it; base_ms and the KV capacity stay the base preset's.",
    )
    p.add_argument("--shape", default="llama3-8b", help=f"one of: {', '.join(SHAPES.names())}")
    p.add_argument("--out", type=Path, required=True, help="preset file to write (.toml or .json)")
    p.add_argument("--table", type=Path, help="operator table to write (default: OUT.ops.json)")
    p.add_argument("--from-table", type=Path, help="compose this operator table; time nothing")
    p.add_argument("--base", help="preset to build on (default: the shape's derived H200 preset)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: CUDA when present, else CPU)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--threads", type=int, help="torch CPU threads while timing")
    p.add_argument("--tokens", default=_csv(_DEFAULT.tokens), help="token counts: GEMMs, LM head")
    p.add_argument("--decode", default=_csv(f"{b}x{n}" for b, n in _DEFAULT.decode),
                   help="decode attention shapes BxL (B sequences over L context tokens)")  # fmt: skip
    p.add_argument("--prefill", default=_csv(_DEFAULT.prefill), help="prefill attention tokens")
    p.add_argument("--copy-blocks", type=int, default=_DEFAULT.copy_blocks,
                   help="KV blocks copied one by one each way (CUDA only; 0: none)")  # fmt: skip
    p.add_argument("--copy-mib", type=int, default=_DEFAULT.copy_big_bytes >> 20,
                   help="one large copy each way, MiB (CUDA only; 0: none)")  # fmt: skip
    p.add_argument("--reps", type=int, default=_DEFAULT.reps, help="launches per timed batch")
    p.add_argument("--interconnect-gbps", type=float, default=450.0,
                   help="GB/s one way for a TP shard's all-reduce (NVLink 4: 450)")  # fmt: skip
    p.set_defaults(handler=run_profile_ops)


def _csv(values: Any) -> str:
    return ",".join(str(v) for v in values)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--{what}: expected comma-separated integers, got {text!r}") from None


def _grid(args: argparse.Namespace) -> Grid:
    try:
        decode = tuple(
            (int(b), int(n))
            for b, _, n in (item.strip().partition("x") for item in args.decode.split(","))
        )
    except ValueError:
        raise ValueError(f"--decode: expected BxL,BxL,..., got {args.decode!r}") from None
    return Grid(
        tokens=_ints(args.tokens, "tokens"),
        decode=decode,
        prefill=_ints(args.prefill, "prefill"),
        copy_blocks=args.copy_blocks,
        copy_big_bytes=args.copy_mib << 20,
        reps=args.reps,
    )


def run_profile_ops(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".toml", ".json"):
        raise ValueError(f"--out {args.out}: must end in .toml or .json")
    shape = SHAPES.get(args.shape)
    base = load_preset(args.base or shape.base_preset)
    if args.from_table:
        data = _read_json(args.from_table)
        source = str(args.from_table)
    else:
        data = _measure(shape, args)
        table_path = args.table or args.out.with_suffix(".ops.json")
        table_path.parent.mkdir(parents=True, exist_ok=True)
        table_path.write_text(json.dumps(data, indent=1) + "\n")
        source = f"{data['gpu']}, {data['wall_s']:.1f} s; wrote {table_path}"
    table = OperatorTable.from_json(data, tp=int(data.get("tp", shape.tp)))
    terms = compose(table, interconnect_bytes_per_s=args.interconnect_gbps * 1e9)
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    fields = preset_fields(table, terms, base=base, when=when)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_preset_file(args.out, fields)
    load_preset(config_file=args.out)  # what was written must load
    print(f"{shape.name}: operator table from {source}")
    for line in terms.report():
        print(f"  {line}")
    if shape.name in SHIPPED_TABLES:
        for line in _against_shipped(shape, terms, args.interconnect_gbps * 1e9):
            print(f"  {line}")
    print(f"wrote {args.out} (base {base.name}: base_ms {base.cost.base_ms:.2f} kept)")
    return 0


def _measure(shape: LayerShape, args: argparse.Namespace) -> dict[str, Any]:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ValueError(f"profile-ops needs torch (pip install torch): {exc}") from None
    return profile_operators(
        shape, grid=_grid(args), device=args.device, dtype=args.dtype, threads=args.threads
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read operator table {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an operator table is a JSON object")
    return data


def _against_shipped(shape: LayerShape, terms: OperatorTerms, interconnect: float) -> list[str]:
    """Each term beside the shipped H200 table's, as a relative difference."""
    shipped = compose(OperatorTable.shipped(shape.name, tp=shape.tp), interconnect_bytes_per_s=interconnect)  # fmt: skip
    lines = ["vs the shipped H200 table:"]
    for name in ("prefill_ms_per_token", "decode_ms_per_seq", "kv_ms_per_token",
                 "prefill_attn_ms_per_mtok2", "swap_bytes_per_s"):  # fmt: skip
        mine, theirs = getattr(terms, name), getattr(shipped, name)
        if mine and theirs:
            lines.append(f"  {name:26s} {mine:.4g} vs {theirs:.4g} ({mine / theirs - 1:+.0%})")
    return lines
