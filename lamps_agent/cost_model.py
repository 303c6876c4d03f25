"""How long an engine iteration and a KV swap take.

An iteration's time is linear in what it does, the form INFERCEPT fitted on an A100
(``t = c + a·query_tokens``), extended with a term for the KV tokens attention must read, which
matters on fast GPUs with long contexts::

    t = base + prefill·prefill_tokens + decode·decode_seqs + kv·resident_kv_tokens   (ms)

A swap moves bytes over the host link: ``t = latency + bytes / bandwidth``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class CostModel:
    base_ms: float
    prefill_ms_per_token: float
    decode_ms_per_seq: float
    kv_ms_per_token: float = 0.0
    swap_bytes_per_s: float = 20e9
    swap_latency_ms: float = 0.0
    # ms per 1e6 products of prefill token × context tokens it attends:
    # Σ chunk × (context before chunk + chunk/2)
    prefill_attn_ms_per_mtok2: float = 0.0
    copy_overlaps_compute: bool = True

    def __post_init__(self) -> None:
        for name in (
            "base_ms",
            "prefill_ms_per_token",
            "decode_ms_per_seq",
            "kv_ms_per_token",
            "swap_latency_ms",
            "prefill_attn_ms_per_mtok2",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"cost.{name} must be finite and >= 0, got {value}")
        if not math.isfinite(self.swap_bytes_per_s) or self.swap_bytes_per_s <= 0:
            raise ValueError(f"cost.swap_bytes_per_s must be > 0, got {self.swap_bytes_per_s}")
        if self.base_ms == 0 and self.prefill_ms_per_token == 0 and self.decode_ms_per_seq == 0:
            raise ValueError("cost model must make iterations take time")

    def iteration_time(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        resident_kv_tokens: int,
        prefill_attn_products: float = 0.0,
    ) -> float:
        """Seconds one engine iteration takes."""
        ms = (
            self.base_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_seq * decode_seqs
            + self.kv_ms_per_token * resident_kv_tokens
            + self.prefill_attn_ms_per_mtok2 * prefill_attn_products / 1e6
        )
        return ms / 1000.0

    def prefill_time(self, tokens: float, token_budget: int) -> float:
        """Seconds to prefill ``tokens`` alone, in chunks of ``token_budget``."""
        if tokens <= 0:
            return 0.0
        chunks = math.ceil(tokens / token_budget)
        return (self.base_ms * chunks + self.prefill_ms_per_token * tokens) / 1000.0

    def swap_time(self, nbytes: float) -> float:
        """Seconds to copy ``nbytes`` one way between GPU and host memory."""
        if nbytes <= 0:
            return 0.0
        return self.swap_latency_ms / 1000.0 + nbytes / self.swap_bytes_per_s
