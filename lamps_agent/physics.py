"""Presets from physics: a cost model and a KV capacity derived from a GPU's spec and a model's shape.

An engine iteration reads every weight once (memory-bound at small batch), reads each resident
request's KV (attention during decode), and does ``2·params`` FLOPs per token plus
``4·layers·heads·head_dim`` FLOPs per (query token, context token) pair of attention.  Turned into
the linear :class:`~lamps_agent.cost_model.CostModel`::

    base_ms          = weight bytes per GPU / (HBM bandwidth · bw_eff) + CPU overhead per step
                       (+ 2 all-reduces per layer at their latency, under tensor parallelism)
    kv_ms_per_token  = KV bytes per token per GPU / (HBM bandwidth · bw_eff)
    prefill/decode   = 2·params / TP / (bf16 FLOP/s · flops_eff)
                       (+ the per-token all-reduce bytes over NVLink, under TP)
    prefill_attn     = 1e6 · 4·layers·heads·head_dim / TP / (bf16 FLOP/s · attn_eff)   per 1e6 pairs

and the KV capacity is what is left of the memory cap::

    gpu_kv_gb = TP · (cap per GPU − weight bytes / TP − activations per GPU)

docs/scheduling.md ("Presets") has the arithmetic for every registered preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lamps_agent.cost_model import CostModel
from lamps_agent.errors import ConfigError
from lamps_agent.kv_memory import ModelShape

GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class GPUSpec:
    """One GPU's datasheet numbers (peak, one direction for links)."""

    name: str
    hbm_bytes_per_s: float
    bf16_flops: float  # dense, no sparsity
    memory_gb: float
    host_link_bytes_per_s: float  # PCIe to host memory
    interconnect_bytes_per_s: float = 0.0  # NVLink to peers (0: none)

    def __post_init__(self) -> None:
        for name in ("hbm_bytes_per_s", "bf16_flops", "memory_gb", "host_link_bytes_per_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{self.name}: {name} must be > 0, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer's size and attention shape."""

    name: str
    params: float
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        for name in ("params", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self.name}: {name} must be > 0")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"{self.name}: n_heads must be a multiple of n_kv_heads")

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def shape(self) -> ModelShape:
        return ModelShape(
            name=self.name,
            n_layers=self.n_layers,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            dtype_bytes=self.dtype_bytes,
        )

    @property
    def flops_per_token(self) -> float:
        """Dense FLOPs of one token through every weight (a multiply-add is 2)."""
        return 2.0 * self.params

    @property
    def attn_flops_per_pair(self) -> float:
        """FLOPs of one query token attending one context token: QKᵀ and PV, 2·head_dim each,
        for every query head of every layer."""
        return 4.0 * self.n_layers * self.n_heads * self.head_dim


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """A model on ``tp`` GPUs with the efficiencies and overheads assumed for it."""

    gpu: GPUSpec
    model: ModelSpec
    tp: int = 1
    memory_cap_gb: float  # per GPU, what the engine may use (weights included)
    activation_gb: float  # per GPU: peak activations, CUDA graphs, non-torch memory
    step_overhead_ms: float  # scheduling, sampling, launch per iteration
    flops_eff: float = 0.55
    attn_eff: float = 0.4
    bw_eff: float = 0.8
    host_link_eff: float = 0.6
    allreduce_latency_ms: float = 0.008  # one small all-reduce over NVLink

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ConfigError("tp must be >= 1")
        if self.tp > 1 and self.gpu.interconnect_bytes_per_s <= 0:
            raise ConfigError(f"tp={self.tp} needs an interconnect on {self.gpu.name}")
        for name in ("flops_eff", "attn_eff", "bw_eff", "host_link_eff"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.memory_cap_gb > self.gpu.memory_gb:
            raise ConfigError(f"memory cap {self.memory_cap_gb} GB > {self.gpu.name}'s memory")
        if self.kv_gb <= 0:
            raise ConfigError(
                f"{self.model.name} on {self.tp}× {self.gpu.name}: no memory left for KV "
                f"({self.kv_gb:.1f} GB)"
            )

    @property
    def hbm(self) -> float:
        return self.gpu.hbm_bytes_per_s * self.bw_eff

    @property
    def kv_gb(self) -> float:
        per_gpu = self.memory_cap_gb - self.model.weight_bytes / GB / self.tp - self.activation_gb
        return self.tp * per_gpu

    def base_ms(self) -> float:
        weights = self.model.weight_bytes / self.tp / self.hbm * 1e3
        return weights + self.step_overhead_ms + self._allreduce_latency_ms()

    def _allreduce_latency_ms(self) -> float:
        return 2 * self.model.n_layers * self.allreduce_latency_ms if self.tp > 1 else 0.0

    def token_ms(self) -> float:
        """Per prefill token or decoding sequence: its FLOPs, plus its share of the all-reduces."""
        compute = self.model.flops_per_token / self.tp / (self.gpu.bf16_flops * self.flops_eff)
        return (compute + self._allreduce_bytes_s()) * 1e3

    def _allreduce_bytes_s(self) -> float:
        if self.tp == 1:
            return 0.0
        # 2 all-reduces of one hidden vector per layer; a ring moves 2·(tp−1)/tp of it per GPU.
        nbytes = 2 * self.model.n_layers * self.model.hidden * self.model.dtype_bytes
        return nbytes * 2 * (self.tp - 1) / self.tp / self.gpu.interconnect_bytes_per_s

    def kv_ms_per_token(self) -> float:
        return self.model.shape.kv_bytes_per_token / self.tp / self.hbm * 1e3

    def attn_ms_per_mtok2(self) -> float:
        flops = 1e6 * self.model.attn_flops_per_pair / self.tp
        return flops / (self.gpu.bf16_flops * self.attn_eff) * 1e3

    def swap_bytes_per_s(self) -> float:
        # Each GPU copies its own KV shard over its own host link.
        return self.tp * self.gpu.host_link_bytes_per_s * self.host_link_eff

    def cost_model(self) -> CostModel:
        token = self.token_ms()
        return CostModel(
            base_ms=self.base_ms(),
            prefill_ms_per_token=token,
            decode_ms_per_seq=token,
            kv_ms_per_token=self.kv_ms_per_token(),
            prefill_attn_ms_per_mtok2=self.attn_ms_per_mtok2(),
            swap_bytes_per_s=self.swap_bytes_per_s(),
        )


# -- datasheets ------------------------------------------------------------------------------------

A100_SXM_80GB = GPUSpec(
    name="A100-SXM4-80GB",
    hbm_bytes_per_s=2.039e12,
    bf16_flops=312e12,
    memory_gb=80.0,
    host_link_bytes_per_s=32e9,  # PCIe 4.0 x16
    interconnect_bytes_per_s=300e9,  # NVLink 3: 600 GB/s both ways
)
H100_SXM = GPUSpec(
    name="H100-SXM5-80GB",
    hbm_bytes_per_s=3.35e12,
    bf16_flops=989e12,
    memory_gb=80.0,
    host_link_bytes_per_s=64e9,  # PCIe 5.0 x16
    interconnect_bytes_per_s=450e9,  # NVLink 4: 900 GB/s both ways
)
H200_SXM = GPUSpec(
    name="H200-SXM-141GB",
    hbm_bytes_per_s=4.8e12,
    bf16_flops=989e12,
    memory_gb=141.0,
    host_link_bytes_per_s=64e9,
    interconnect_bytes_per_s=450e9,
)

GPTJ_6B = ModelSpec(
    name="gpt-j-6b",
    params=6.05e9,
    n_layers=28,
    n_heads=16,
    n_kv_heads=16,
    head_dim=256,
    hidden=4096,
)
LLAMA3_8B = ModelSpec(
    name="llama-3-8b",
    params=8.03e9,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    hidden=4096,
)
LLAMA3_70B = ModelSpec(
    name="llama-3-70b",
    params=70.55e9,
    n_layers=80,
    n_heads=64,
    n_kv_heads=8,
    head_dim=128,
    hidden=8192,
)
