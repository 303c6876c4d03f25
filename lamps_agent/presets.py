"""Hardware presets: model shape, KV capacity, batching limits and cost constants.

Each preset can be overridden field by field (``--set gpu_kv_gb=30 --set cost.base_ms=12``) or from
a TOML / JSON file (``{"base": "a100-gptj6b", "gpu_kv_gb": 30, "cost": {"base_ms": 12}}``).
The derivation of every constant is in docs/scheduling.md ("Presets").
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamps_agent import physics
from lamps_agent.cost_model import CostModel
from lamps_agent.errors import ConfigError
from lamps_agent.kv_memory import ModelShape
from lamps_agent.opcost import SHIPPED_TABLES
from lamps_agent.registry import Registry

GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    name: str
    description: str
    model: ModelShape
    cost: CostModel
    gpu_kv_gb: float  # KV-cache capacity on the GPU
    host_swap_gb: float  # host memory for swapped-out KV
    block_size: int = 16
    token_budget: int = 2048  # chunked-prefill budget: tokens per iteration
    max_num_seqs: int = 256  # requests resident and advancing at once
    saturation_tokens: int = 384  # INFERCEPT's S: tokens that saturate the GPU
    # Whether the engine can copy KV that is pinned on the GPU out to the host after the turn
    # ended (INFERCEPT's revisit, a pin released under pressure or at its TTL).  vLLM with the
    # plug-in cannot (its connector copies only at a turn's end), so by default the simulator
    # cannot either, and such a swap is a discard in both; INFERCEPT's own engine could.
    pin_swap: bool = False
    # The engine's longest context (vLLM's max_model_len); None: no limit beyond the KV cache.
    # Policies that predict how far a context grows cap it here (Policy.limit_context), in the
    # simulator as on the served engine.
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.gpu_kv_gb <= 0 or self.host_swap_gb < 0:
            raise ConfigError("gpu_kv_gb must be > 0 and host_swap_gb >= 0")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError(f"max_model_len must be >= 1, got {self.max_model_len}")
        for name in ("block_size", "token_budget", "max_num_seqs", "saturation_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.num_gpu_blocks < 1:
            raise ConfigError("gpu_kv_gb is too small for a single block")

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def block_bytes(self) -> int:
        return self.kv_bytes_per_token * self.block_size

    @property
    def num_gpu_blocks(self) -> int:
        return int(self.gpu_kv_gb * GB // self.block_bytes)

    @property
    def num_host_blocks(self) -> int:
        return int(self.host_swap_gb * GB // self.block_bytes)

    @property
    def gpu_kv_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def with_overrides(self, overrides: Mapping[str, Any]) -> Preset:
        """A copy with fields replaced; nested ``cost`` / ``model`` accept a mapping or dotted keys."""
        flat: dict[str, Any] = {}
        for key, value in overrides.items():
            if isinstance(value, Mapping) and key in ("cost", "model"):
                for sub, subvalue in value.items():
                    flat[f"{key}.{sub}"] = subvalue
            else:
                flat[key] = value
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {"cost": {}, "model": {}}
        for key, value in flat.items():
            head, _, tail = key.partition(".")
            if tail:
                if head not in nested:
                    raise ConfigError(f"unknown preset field {key!r}")
                _check_field(getattr(self, head), tail, key)
                nested[head][tail] = _coerce(getattr(getattr(self, head), tail), value, key)
            else:
                _check_field(self, key, key)
                if key in ("cost", "model", "name"):
                    raise ConfigError(f"preset field {key!r} cannot be overridden directly")
                top[key] = _coerce(getattr(self, key), value, key)
        try:
            for head, changes in nested.items():
                if changes:
                    top[head] = dataclasses.replace(getattr(self, head), **changes)
            return dataclasses.replace(self, **top)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def _check_field(obj: object, name: str, key: str) -> None:
    names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    if name not in names:
        raise ConfigError(f"unknown preset field {key!r}; valid: {', '.join(sorted(names))}")


_OPTIONAL_INT = frozenset({"max_model_len"})  # None (unset) or an int


def _coerce(current: Any, value: Any, key: str) -> Any:
    try:
        if key in _OPTIONAL_INT:
            return None if value is None or str(value).lower() in ("", "none") else int(value)
        if isinstance(current, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"preset field {key!r}: cannot use {value!r}") from None


GPTJ_6B = physics.GPTJ_6B.shape
LLAMA3_8B = physics.LLAMA3_8B.shape
VICUNA_13B = ModelShape(name="vicuna-13b", n_layers=40, n_kv_heads=40, head_dim=128)

# The LAMPS paper's A100 setup: a 40 GB cap that includes GPT-J's 12.1 GB of weights.
A100_GPTJ = physics.Deployment(
    gpu=physics.A100_SXM_80GB,
    model=physics.GPTJ_6B,
    memory_cap_gb=40.0,
    activation_gb=1.5,
    step_overhead_ms=0.0,  # inside INFERCEPT's fitted base, kept below
)
H100_LLAMA3_8B = physics.Deployment(
    gpu=physics.H100_SXM, model=physics.LLAMA3_8B, memory_cap_gb=72.0, activation_gb=4.0,
    step_overhead_ms=1.5,
)  # fmt: skip
H200_LLAMA3_8B = physics.Deployment(
    gpu=physics.H200_SXM, model=physics.LLAMA3_8B, memory_cap_gb=126.9, activation_gb=4.0,
    step_overhead_ms=1.5,
)  # fmt: skip
H200_GPTJ = physics.Deployment(
    gpu=physics.H200_SXM, model=physics.GPTJ_6B, memory_cap_gb=126.9, activation_gb=4.0,
    step_overhead_ms=1.5,
)  # fmt: skip
H100_LLAMA3_70B_TP4 = physics.Deployment(
    gpu=physics.H100_SXM, model=physics.LLAMA3_70B, tp=4, memory_cap_gb=72.0, activation_gb=5.0,
    step_overhead_ms=1.5,
)  # fmt: skip
H200_LLAMA3_70B_TP4 = physics.Deployment(
    gpu=physics.H200_SXM, model=physics.LLAMA3_70B, tp=4, memory_cap_gb=126.9, activation_gb=5.0,
    step_overhead_ms=1.5,
)  # fmt: skip


def from_physics(
    name: str,
    deployment: physics.Deployment,
    *,
    description: str,
    host_swap_gb: float,
    token_budget: int,
    max_num_seqs: int,
    cost: CostModel | None = None,
) -> Preset:
    """A preset whose capacity (and, unless ``cost`` is given, cost model) is derived."""
    return Preset(
        name=name,
        description=description,
        model=deployment.model.shape,
        cost=cost or deployment.cost_model(),
        gpu_kv_gb=deployment.kv_gb,
        host_swap_gb=host_swap_gb,
        token_budget=token_budget,
        max_num_seqs=max_num_seqs,
    )


def _a100_gptj6b() -> Preset:
    derived = A100_GPTJ.cost_model()
    # INFERCEPT's published fit on an A100 (t = 10 ms + 0.0463 ms per query token) is a
    # measurement and beats the datasheet's guess at FLOP efficiency; physics adds what the fit
    # lacks: the KV read and attention over the context.
    cost = dataclasses.replace(
        derived,
        base_ms=10.0,
        prefill_ms_per_token=0.0463,
        decode_ms_per_seq=0.0463,
        swap_bytes_per_s=20e9,
    )
    return from_physics(
        "a100-gptj6b",
        A100_GPTJ,
        description="GPT-J-6B on one A100 capped at 40 GB incl. weights (LAMPS); INFERCEPT's "
        "fitted step cost + KV read and attention from the datasheet; vLLM 0.2 token budget",
        host_swap_gb=64.0,
        token_budget=2048,  # vLLM 0.2: max_num_batched_tokens = max(max_model_len=2048, 2048)
        max_num_seqs=256,
        cost=cost,
    )


PRESETS: Registry[Preset] = Registry("preset")
PRESETS.register("a100-gptj6b")(_a100_gptj6b())
PRESETS.register("a100-vicuna13b")(
    Preset(
        name="a100-vicuna13b",
        description="Vicuna-13B on two A100s (TP2); INFERCEPT's fitted constants; 40 GB KV cap",
        model=VICUNA_13B,
        cost=CostModel(
            base_ms=15.4,
            prefill_ms_per_token=0.0279,
            decode_ms_per_seq=0.0279,
            swap_bytes_per_s=40e9,
        ),
        gpu_kv_gb=40.0,
        host_swap_gb=128.0,
    )
)
# vLLM V1's defaults for an OpenAI server on a GPU of >= 70 GiB that is not an A100.
_V1_H_BUDGET, _V1_H_SEQS = 8192, 1024
for _name, _deployment, _what, _host in (
    ("h100-llama3-8b", H100_LLAMA3_8B, "Llama-3-8B bf16 on one H100 SXM", 128.0),
    ("h200-llama3-8b-derived", H200_LLAMA3_8B, "Llama-3-8B bf16 on one H200", 128.0),
    ("h100-llama3-70b-tp4", H100_LLAMA3_70B_TP4, "Llama-3-70B bf16 on 4 H100 SXM (TP4)", 512.0),
    ("h200-llama3-70b-tp4-derived", H200_LLAMA3_70B_TP4, "Llama-3-70B bf16 on 4 H200 (TP4)", 512.0),
    ("h200-gptj6b-derived", H200_GPTJ, "GPT-J-6B bf16 on one H200", 128.0),
):
    PRESETS.register(_name)(
        from_physics(
            _name,
            _deployment,
            description=f"{_what}; derived from the datasheet (docs), not measured",
            host_swap_gb=_host,
            token_budget=_V1_H_BUDGET,
            max_num_seqs=_V1_H_SEQS,
        )
    )


@dataclass(frozen=True, slots=True)
class MeasuredTerms:
    """Cost terms composed from an operator table shipped in ``lamps_agent/data/gpu``
    (:mod:`lamps_agent.opcost`), rounded to 3 significant digits; a test holds them to the
    composition."""

    table: str  # a key of SHIPPED_TABLES
    tp: int
    prefill_ms_per_token: float
    decode_ms_per_seq: float
    kv_ms_per_token: float
    prefill_attn_ms_per_mtok2: float
    swap_bytes_per_s: float


def _measured(derived: str, terms: MeasuredTerms, *, what: str, extra: str = "") -> Preset:
    """``derived`` with the terms an operator table measures; its base and capacity kept."""
    base = PRESETS.get(derived)
    cost = dataclasses.replace(
        base.cost,
        prefill_ms_per_token=terms.prefill_ms_per_token,
        decode_ms_per_seq=terms.decode_ms_per_seq,
        kv_ms_per_token=terms.kv_ms_per_token,
        prefill_attn_ms_per_mtok2=terms.prefill_attn_ms_per_mtok2,
        swap_bytes_per_s=terms.swap_bytes_per_s,
    )
    description = (
        f"{what}; per-token, decode, KV-read and prefill-attention terms and the copy bandwidth "
        f"fitted (least squares) from operator timings measured on an H200 "
        f"(lamps_agent/data/gpu/{SHIPPED_TABLES[terms.table]}, 2026-12-04, cuBLAS + flash SDPA, not "
        f"vLLM's kernels){extra}; base_ms {base.cost.base_ms:.2f} kept from {derived} (datasheet "
        f"weight reads + an assumed 1.5 ms of CPU per step; operators do not measure an engine's "
        f"floor); KV capacity derived"
    )
    return dataclasses.replace(
        base, name=derived.removesuffix("-derived"), description=description, cost=cost
    )


MEASURED: dict[str, MeasuredTerms] = {
    "h200-llama3-8b": MeasuredTerms(
        table="llama3-8b", tp=1, prefill_ms_per_token=0.0206, decode_ms_per_seq=0.0223,
        kv_ms_per_token=2.87e-5, prefill_attn_ms_per_mtok2=0.868, swap_bytes_per_s=51.5e9,
    ),
    "h200-llama3-70b-tp4": MeasuredTerms(
        table="llama3-70b-tp4", tp=4, prefill_ms_per_token=0.0596, decode_ms_per_seq=0.0603,
        kv_ms_per_token=1.65e-5, prefill_attn_ms_per_mtok2=1.02, swap_bytes_per_s=197e9,
    ),
    "h200-gptj6b": MeasuredTerms(
        table="gptj-6b", tp=1, prefill_ms_per_token=0.0171, decode_ms_per_seq=0.0176,
        kv_ms_per_token=1.25e-4, prefill_attn_ms_per_mtok2=0.697, swap_bytes_per_s=54.4e9,
    ),
}  # fmt: skip
PRESETS.register("h200-llama3-8b")(
    _measured(
        "h200-llama3-8b-derived", MEASURED["h200-llama3-8b"], what="Llama-3-8B bf16 on one H200"
    )
)
PRESETS.register("h200-llama3-70b-tp4")(
    _measured(
        "h200-llama3-70b-tp4-derived",
        MEASURED["h200-llama3-70b-tp4"],
        what="Llama-3-70B bf16 on 4 H200 (TP4)",
        extra="; the table is one GPU's shard without the all-reduce, so each token adds 2 "
        "all-reduces per layer of 2·(4−1)/4 of its hidden vector over NVLink 4 at the datasheet's "
        "450 GB/s (0.0087 ms; their latency is in the kept base), and copies take 4 × one GPU's "
        "measured host link",
    )
)
PRESETS.register("h200-gptj6b")(
    _measured("h200-gptj6b-derived", MEASURED["h200-gptj6b"], what="GPT-J-6B bf16 on one H200")
)


# -- the engine a fitted preset was measured on ---------------------------------------------
ENGINE_FILE = (
    "engine.json"  # bench --engine compare's record of its servers' engine, beside their step logs
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasuredEngine:
    """The engine a fitted preset file was measured on (its ``[measured]`` table), or the engine
    a run uses: a run on another engine than the preset's is refused (:func:`check_measured`),
    not silently simulated with constants of another process layout, block size or KV size.
    ``None`` is "not known", never compared."""

    # "served" (through the HTTP server, as bench --engine and validate run it) or "in-process"
    how: str | None = None
    model: str | None = None  # the model folder's name
    block_size: int | None = None
    kv_cache_bytes: int | None = None  # --kv-cache-memory-bytes
    token_budget: int | None = None  # --max-num-batched-tokens
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    reserved_cpus: int | None = None  # VLLM_CPU_NUM_OF_RESERVED_CPU
    vllm: str | None = None  # vLLM's version

    def __post_init__(self) -> None:
        if self.how not in (None, "served", "in-process"):
            raise ConfigError(f"measured.how must be 'served' or 'in-process', got {self.how!r}")

    @classmethod
    def from_fields(cls, data: Mapping[str, Any], *, source: str) -> MeasuredEngine:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown [measured] field(s) {', '.join(unknown)}")
        texts = ("how", "model", "vllm")
        try:
            values: dict[str, Any] = {
                k: v if k in texts or v is None else int(v) for k, v in data.items()
            }
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: [measured]: {exc}") from None

    def fields(self) -> dict[str, Any]:
        """The ``[measured]`` table to write (what is known)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def mismatches(self, run: MeasuredEngine) -> list[str]:
        """Where ``run`` differs from this measurement, as "field: measured X, run Y"."""
        out = []
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(run, f.name)
            if mine is not None and theirs is not None and mine != theirs:
                out.append(f"{f.name}: measured {mine}, this run {theirs}")
        return out


def read_measured(path: str | Path) -> MeasuredEngine | None:
    """A preset file's ``[measured]`` table; None when the file has none (a hand-written file,
    or one written before profiles recorded it)."""
    data = read_preset_file(Path(path)).get("measured")
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ConfigError(f"preset file {path}: [measured] must be a table")
    return MeasuredEngine.from_fields(data, source=f"preset file {path}")


def check_measured(path: str | Path, run: MeasuredEngine) -> MeasuredEngine | None:
    """Refuse a preset file measured on another engine than ``run``'s (a ConfigError naming each
    difference); the file's measurement, or None where it records none."""
    measured = read_measured(path)
    if measured is None:
        return None
    diffs = measured.mismatches(run)
    if diffs:
        raise ConfigError(
            f"preset file {path} was measured on another engine than this run's ("
            + "; ".join(diffs)
            + "): profile this engine (lamps-agent profile) or run the engine it was measured on"
        )
    return measured


def load_preset(
    name: str = "a100-gptj6b",
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Preset:
    """A registered preset, then the config file's fields, then explicit overrides.  A file's
    ``[measured]`` table (the engine it was profiled on) is checked for form here and against a
    run's engine by :func:`check_measured`."""
    preset = PRESETS.get(name)
    if config_file is not None:
        data = read_preset_file(Path(config_file))
        if "measured" in data:
            read_measured(config_file)  # well-formed, or a clear error now
            data.pop("measured")
        base = data.pop("base", None)
        if base is not None:
            preset = PRESETS.get(str(base))
        preset = preset.with_overrides(data)
    if overrides:
        preset = preset.with_overrides(overrides)
    return preset


def read_preset_file(path: Path) -> dict[str, Any]:
    """A preset file's fields as written (TOML or JSON), not yet applied to its base."""
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read preset file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a table / object")
    return data


def write_preset_file(path: Path, fields: Mapping[str, Any]) -> None:
    """Write what :func:`load_preset` reads back: TOML for ``.toml``, else JSON; one level of
    tables (``cost``, ``model``)."""
    if path.suffix != ".toml":
        path.write_text(json.dumps(fields, indent=2) + "\n")
        return
    top = [f"{k} = {_toml_value(v)}" for k, v in fields.items() if not isinstance(v, Mapping)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{sk} = {_toml_value(sv)}" for sk, sv in v.items())
        for k, v in fields.items()
        if isinstance(v, Mapping)
    ]
    path.write_text("\n".join(top) + "\n" + "\n".join(tables) + "\n")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["gpu_kv_gb=30", "cost.base_ms=12"]`` -> a mapping for :meth:`Preset.with_overrides`."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        result[key.strip()] = value.strip()
    return result
