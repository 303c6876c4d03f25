"""How long an engine iteration and a KV swap take.

An iteration's time is linear in what it does, the form INFERCEPT fitted on an A100
(``t = c + a·query_tokens``), extended with a term for the KV tokens attention must read, which
matters on fast GPUs with long contexts, and a term for prefill attention over the context that
already exists (quadratic in the context; it dominates past ~8k tokens on an 8B model)::

    t = base + prefill·prefill_tokens + decode·decode_seqs + kv·resident_kv_tokens
        + attn·Σ_chunks chunk·(context_before + chunk/2) / 1e6
        + prefill_request·prefill_seqs                                                (ms)

The last term is a fixed cost per request a step prefills (its chunk's setup in the worker:
input preparation, a sampler row, the attention metadata of one more query range); on the CPU
engine as served it is ~1.3–2.4 ms, larger than a whole decode step, and without it a fit tilts
the per-token slope to cover small prefills and over-predicts long ones (docs/benchmarks.md,
"The engine as served").

A served engine adds time outside its steps: each turn's request crosses the HTTP server on
its way in and its tokens on their way out (``frontend_ms_per_turn``, measured by
``lamps-agent validate`` on the engine as served; the simulator delays each turn's start by it).

A swap moves bytes over the host link: ``t = latency + bytes / bandwidth``.  Copies either overlap
the iteration's compute (``copy_overlaps_compute``: the step takes ``max(compute, copy)``, as
vLLM's CPU-offload connector and INFERCEPT's pipelined swaps do) or serialise with it (the step
takes ``compute + copy``, as the LAMPS prototype's blocking swaps do).
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
    copy_overlaps_compute: bool = True  # True: step = max(compute, copy); False: compute + copy
    prefill_attn_ms_per_mtok2: float = 0.0  # ms per 1e6 (query token × context token) products
    prefill_request_ms: float = 0.0  # ms per request a step prefills (a chunk of its prompt)
    # Time a turn spends outside the engine on a served one: the request's way in through the
    # HTTP server and its tokens' way out to the client (0 in-process; measured by validate)
    frontend_ms_per_turn: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "base_ms",
            "prefill_ms_per_token",
            "decode_ms_per_seq",
            "kv_ms_per_token",
            "swap_latency_ms",
            "prefill_attn_ms_per_mtok2",
            "prefill_request_ms",
            "frontend_ms_per_turn",
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
        prefill_seqs: int = 0,
    ) -> float:
        """Seconds one engine iteration computes.  ``prefill_attn_products`` is
        :func:`attn_products` summed over the iteration's prefill chunks, ``prefill_seqs`` the
        number of those chunks (one per prefilling request)."""
        ms = (
            self.base_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_seq * decode_seqs
            + self.kv_ms_per_token * resident_kv_tokens
            + self.prefill_attn_ms_per_mtok2 * prefill_attn_products * 1e-6
            + self.prefill_request_ms * prefill_seqs
        )
        return ms / 1000.0

    def prefill_time(self, tokens: float, token_budget: int, context_tokens: float = 0.0) -> float:
        """Seconds to prefill ``tokens`` alone after ``context_tokens`` that already have KV,
        in chunks of ``token_budget`` (each chunk attends to everything before it)."""
        if tokens <= 0:
            return 0.0
        chunks = math.ceil(tokens / token_budget)
        ms = (self.base_ms + self.prefill_request_ms) * chunks + self.prefill_ms_per_token * tokens
        if self.prefill_attn_ms_per_mtok2 > 0:
            # Σ chunk·(before + chunk/2) over the chunks = tokens·(context + tokens/2) exactly
            # when the chunks tile the range: the triangle of new × new pairs plus the rectangle.
            ms += self.prefill_attn_ms_per_mtok2 * tokens * (context_tokens + tokens / 2) * 1e-6
        return ms / 1000.0

    def swap_time(self, nbytes: float) -> float:
        """Seconds to copy ``nbytes`` one way between GPU and host memory."""
        if nbytes <= 0:
            return 0.0
        return self.swap_latency_ms / 1000.0 + nbytes / self.swap_bytes_per_s

    def step_time(self, compute_s: float, copy_s: float) -> float:
        """Seconds a step takes that computes for ``compute_s`` and copies for ``copy_s``."""
        if self.copy_overlaps_compute:
            return max(compute_s, copy_s)
        return compute_s + copy_s

    def copy_budget_bytes(self, compute_s: float) -> float:
        """Bytes the host link moves while a step computes for ``compute_s``: what a copy can
        hide behind (overlap), or the copy a step takes on at most (serialised: the same bytes
        at most double the step)."""
        return max(compute_s - self.swap_latency_ms / 1000.0, 0.0) * self.swap_bytes_per_s


def attn_products(chunk_tokens: float, context_before: float) -> float:
    """Query × key pairs of one prefill chunk over ``context_before`` tokens with KV (causal
    within the chunk): ``chunk·(context_before + chunk/2)``."""
    return chunk_tokens * (context_before + chunk_tokens / 2.0)
