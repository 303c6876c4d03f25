"""Cost-model terms composed from operator timings (Vidur's method): one layer's measured
operators, summed over the layers, become the per-token, KV-read, attention and copy terms of
:class:`~lamps_agent.cost_model.CostModel`.

An operator table (``lamps_agent/data/gpu/*.json``, or what :mod:`lamps_agent.opprofile` writes)
holds milliseconds for ONE layer of one GPU.  Each term is a least-squares line through its
measured points, multiplied by the number of layers::

    prefill_ms_per_token       layers × slope of gemm_ms[T] over T, fitted on the compute-bound
                               points (time ≥ 2× the smallest T's; below that the GEMMs only read
                               their weights, which the per-step base pays for)
                               + under TP, the token's share of 2 all-reduces per layer over the
                               interconnect: 2 · layers · hidden · 2 B · 2(n−1)/n / bandwidth
    decode_ms_per_seq          prefill_ms_per_token + the LM head's slope per sampled row (a
                               decoding sequence samples a row every step; a prefill chunk one row)
    kv_ms_per_token            layers × slope of decode_attn_ms["BxL"] over B·L, every point
    prefill_attn_ms_per_mtok2  layers × slope of prefill_attn_ms[T] over the T·T/2 products
                               (causal, no earlier context) per 1e6, every point
    swap_bytes_per_s           TP × the slower direction of the block-by-block copies (each GPU
                               copies its own KV shard over its own host link)

The per-step base is NOT composed: an engine's floor is its launch and scheduling overhead plus
the weight reads of a small batch, and the operators only see the second (``small_batch_ms``,
reported beside the terms).  A preset built here takes its base from an engine measurement or
from the datasheet-derived preset it builds on, and says which.  Unfused elementwise work
(``elementwise_ms``) is left out: vLLM fuses most of it; its slope is reported as an upper bound.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamps_agent.cost_model import CostModel
from lamps_agent.errors import ConfigError
from lamps_agent.kv_memory import ModelShape

if TYPE_CHECKING:
    from lamps_agent.presets import Preset

SHIPPED_TABLES = {
    "llama3-8b": "h200_llama3-8b.json",
    "llama3-70b-tp4": "h200_llama3-70b-tp4.json",
    "gptj-6b": "h200_gptj-6b.json",
}
COPY_KEYS = ("d2h_blocks", "h2d_blocks")
_COMPUTE_BOUND = 2.0  # a GEMM is compute-bound once it takes twice its smallest-T time


@dataclass(frozen=True, slots=True)
class LineFit:
    """``y ≈ intercept + slope · x`` by ordinary least squares, with its R² over ``points``."""

    slope: float
    intercept: float
    r2: float
    points: int


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    if len(xs) != len(ys) or len(xs) < 2:
        raise ConfigError(f"a line needs at least 2 points, got {len(xs)}")
    mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ConfigError("a line needs at least 2 distinct x values")
    slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((y - my) ** 2 for y in ys)
    ss_res = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return LineFit(slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, len(xs))


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorTable:
    """One layer's operator timings (ms) on one GPU, as the JSON files hold them."""

    model: str
    device: str
    torch: str
    layers: int
    hidden: int
    kv_heads: int  # this GPU's
    head_dim: int
    tp: int
    dtype_bytes: int
    gemm_ms: Mapping[int, float]
    lm_head_ms: Mapping[int, float]
    decode_attn_ms: Mapping[tuple[int, int], float]
    prefill_attn_ms: Mapping[int, float]
    elementwise_ms: Mapping[int, float]
    copy_bytes_per_s: Mapping[str, float]  # COPY_KEYS (and the 1 GiB copies) when measured

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, tp: int | None = None) -> OperatorTable:
        """Read a table; ``tp`` overrides the file's ``tp`` (the shipped files do not name it)."""
        try:
            shape = data["shape"]
            return cls(
                model=str(data.get("model", "?")),
                device=str(data.get("gpu", "?")),
                torch=str(data.get("torch", "?")),
                layers=int(data["layers"]),
                hidden=int(shape["hidden"]),
                kv_heads=int(shape["kv_heads"]),
                head_dim=int(shape["head_dim"]),
                tp=int(tp if tp is not None else data.get("tp", 1)),
                dtype_bytes=int(data.get("dtype_bytes", 2)),
                gemm_ms=_by_int(data["gemm_ms"]),
                lm_head_ms=_by_int(data["lm_head_ms"]),
                decode_attn_ms={_bxl(k): float(v) for k, v in data["decode_attn_ms"].items()},
                prefill_attn_ms=_by_int(data["prefill_attn_ms"]),
                elementwise_ms=_by_int(data.get("elementwise_ms", {})),
                copy_bytes_per_s={k: float(v["GB_per_s"]) * 1e9 for k, v in data["copy"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an operator table: {exc!r}") from None

    @classmethod
    def load(cls, path: str | Path, *, tp: int | None = None) -> OperatorTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read operator table {path}: {exc}") from exc
        return cls.from_json(data, tp=tp)

    @classmethod
    def shipped(cls, shape: str, *, tp: int | None = None) -> OperatorTable:
        """A table measured on an H200 and shipped in ``lamps_agent/data/gpu``."""
        if shape not in SHIPPED_TABLES:
            raise ConfigError(f"no shipped table {shape!r}; valid: {', '.join(SHIPPED_TABLES)}")
        ref = resources.files("lamps_agent") / "data" / "gpu" / SHIPPED_TABLES[shape]
        return cls.load(Path(str(ref)), tp=tp)

    def model_shape(self) -> ModelShape:
        """The whole model's KV shape: every shard's KV heads."""
        return ModelShape(
            name=self.model.removesuffix(" shape"),
            n_layers=self.layers,
            n_kv_heads=self.kv_heads * self.tp,
            head_dim=self.head_dim,
            dtype_bytes=self.dtype_bytes,
        )


def _by_int(values: Mapping[str, Any]) -> dict[int, float]:
    result = {int(k): float(v) for k, v in values.items()}
    for key, ms in result.items():
        if not math.isfinite(ms) or ms <= 0:
            raise ValueError(f"time at {key} must be > 0, got {ms}")
    return dict(sorted(result.items()))


def _bxl(key: str) -> tuple[int, int]:
    batch, _, context = key.partition("x")
    return int(batch), int(context)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorTerms:
    """The cost-model terms an operator table composes into, and the fits behind them."""

    prefill_ms_per_token: float
    decode_ms_per_seq: float
    kv_ms_per_token: float
    prefill_attn_ms_per_mtok2: float
    swap_bytes_per_s: float | None  # None: no copies measured (a CPU-only profile)
    allreduce_ms_per_token: float  # inside the two per-token terms above
    small_batch_ms: float  # GEMMs of every layer + the LM head at the smallest T: the GPU floor
    elementwise_ms_per_token: float  # left out (vLLM fuses it); an upper bound
    fits: Mapping[str, LineFit]

    def cost_model(self, *, base_ms: float, fallback: CostModel) -> CostModel:
        """A cost model of these terms and ``base_ms``; what the table lacks (the copy
        bandwidth of a CPU profile, the swap latency, the overlap rule) comes from ``fallback``."""
        return CostModel(
            base_ms=base_ms,
            prefill_ms_per_token=self.prefill_ms_per_token,
            decode_ms_per_seq=self.decode_ms_per_seq,
            kv_ms_per_token=self.kv_ms_per_token,
            prefill_attn_ms_per_mtok2=self.prefill_attn_ms_per_mtok2,
            swap_bytes_per_s=self.swap_bytes_per_s or fallback.swap_bytes_per_s,
            swap_latency_ms=fallback.swap_latency_ms,
            copy_overlaps_compute=fallback.copy_overlaps_compute,
        )

    def report(self) -> list[str]:
        """One line per term with its fit, for the CLI and the docs."""
        copies = (
            f"{self.swap_bytes_per_s / 1e9:.1f} GB/s" if self.swap_bytes_per_s else "not measured"
        )
        lines = [
            f"per prefill token  {self.prefill_ms_per_token:.4g} ms "
            f"(of which all-reduce {self.allreduce_ms_per_token:.3g})",
            f"per decoding seq   {self.decode_ms_per_seq:.4g} ms",
            f"KV read per token  {self.kv_ms_per_token:.3g} ms",
            f"prefill attention  {self.prefill_attn_ms_per_mtok2:.3g} ms per 1e6 products",
            f"host<->device      {copies}",
            f"small-batch step   {self.small_batch_ms:.3g} ms of GEMMs + LM head (not the base)",
            f"elementwise        {self.elementwise_ms_per_token:.3g} ms per token, left out",
        ]
        lines += [
            f"  fit {name}: R² {fit.r2:.4f} over {fit.points} points"
            + ("" if fit.slope > 0 else "; its slope is not positive (noise?): term set to 0")
            for name, fit in self.fits.items()
        ]
        return lines


def compose(table: OperatorTable, *, interconnect_bytes_per_s: float = 0.0) -> OperatorTerms:
    """The table's cost-model terms for the whole model (all layers, one step); under TP
    (``table.tp > 1``) the all-reduce comes from ``interconnect_bytes_per_s``, one direction."""
    n = table.layers
    gemm = fit_line(*_compute_bound(table.gemm_ms))
    lm_head = fit_line(*_compute_bound(table.lm_head_ms))
    pairs = sorted(table.decode_attn_ms.items())
    kv = fit_line([b * length for (b, length), _ in pairs], [ms for _, ms in pairs])
    pre = sorted(table.prefill_attn_ms.items())
    attn = fit_line([t * t / 2 / 1e6 for t, _ in pre], [ms for _, ms in pre])
    fits = {"gemm": gemm, "lm_head": lm_head, "decode_attn": kv, "prefill_attn": attn}
    elementwise = 0.0
    if len(table.elementwise_ms) >= 2:
        fits["elementwise"] = fit_line(*_compute_bound(table.elementwise_ms))
        elementwise = n * _rising(fits["elementwise"])
    allreduce = _allreduce_ms_per_token(table, interconnect_bytes_per_s)
    per_token = n * _rising(gemm) + allreduce
    small_t = min(table.gemm_ms)
    copies = [table.copy_bytes_per_s[k] for k in COPY_KEYS if k in table.copy_bytes_per_s]
    return OperatorTerms(
        prefill_ms_per_token=per_token,
        decode_ms_per_seq=per_token + _rising(lm_head),
        kv_ms_per_token=n * _rising(kv),
        prefill_attn_ms_per_mtok2=n * _rising(attn),
        swap_bytes_per_s=table.tp * min(copies) if copies else None,
        allreduce_ms_per_token=allreduce,
        small_batch_ms=n * table.gemm_ms[small_t] + table.lm_head_ms[min(table.lm_head_ms)],
        elementwise_ms_per_token=elementwise,
        fits=fits,
    )


def _rising(fit: LineFit) -> float:
    """A fit's slope as a cost term: a falling line is noise (a busy CPU), not a negative cost."""
    return max(fit.slope, 0.0)


def _compute_bound(times: Mapping[int, float]) -> tuple[list[float], list[float]]:
    """The points at or past the first size whose time is twice the smallest size's; the two
    largest when fewer than two are (a device that never leaves its floor on the grid)."""
    sizes = sorted(times)
    floor = times[sizes[0]]
    knee = next((i for i, t in enumerate(sizes) if times[t] >= _COMPUTE_BOUND * floor), None)
    if knee is None or len(sizes) - knee < 2:
        knee = max(len(sizes) - 2, 0)
    chosen = sizes[knee:]
    return [float(t) for t in chosen], [times[t] for t in chosen]


def _allreduce_ms_per_token(table: OperatorTable, bandwidth: float) -> float:
    if table.tp == 1:
        return 0.0
    if bandwidth <= 0:
        raise ConfigError(f"tp={table.tp} needs the interconnect's bandwidth for its all-reduce")
    # 2 all-reduces of one hidden vector per layer; a ring moves 2·(n−1)/n of it per GPU.
    nbytes = 2 * table.layers * table.hidden * table.dtype_bytes
    return nbytes * 2 * (table.tp - 1) / table.tp / bandwidth * 1e3


def preset_fields(
    table: OperatorTable, terms: OperatorTerms, *, base: Preset, when: str
) -> dict[str, Any]:
    """A preset file's content: ``base`` (its name, capacity and ``base_ms``) with the table's
    model shape and composed terms, and a description of where each came from."""
    cost = terms.cost_model(base_ms=base.cost.base_ms, fallback=base.cost)
    worst = min(fits.r2 for fits in terms.fits.values())
    copies = (
        "and copy bandwidth "
        if terms.swap_bytes_per_s
        else f"(no copies measured: {base.name}'s {base.cost.swap_bytes_per_s / 1e9:.1f} GB/s) "
    )
    shard = f" (one GPU's shard under TP{table.tp})" if table.tp > 1 else ""
    allreduce = (
        f"; + TP all-reduce {terms.allreduce_ms_per_token:.3g} ms per token from the interconnect"
        if table.tp > 1
        else ""
    )
    description = (
        f"operator-level profile (lamps-agent profile-ops, {when}) of a {table.model} layer × "
        f"{table.layers}{shard} on {table.device}, torch {table.torch}: per-token, decode, KV-read "
        f"and prefill-attention terms {copies}composed by least squares (R² ≥ {worst:.3f})"
        f"{allreduce}; base_ms {base.cost.base_ms:.2f} and KV capacity kept from {base.name} "
        f"(operators do not measure an engine's per-step floor)"
    )
    shape = table.model_shape()
    return {
        "base": base.name,
        "description": description,
        "model": {
            "name": shape.name,
            "n_layers": shape.n_layers,
            "n_kv_heads": shape.n_kv_heads,
            "head_dim": shape.head_dim,
            "dtype_bytes": shape.dtype_bytes,
        },
        "cost": {f.name: getattr(cost, f.name) for f in dataclasses.fields(cost)},
    }
