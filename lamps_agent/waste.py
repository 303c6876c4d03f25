"""INFERCEPT's memory-waste equations, in token·seconds (multiply by bytes/token for byte·seconds).

Waste is GPU memory held without doing useful work, times how long.  The forms follow INFERCEPT's
published scheduler (WukLab/InferCept ``scheduler_v2.py``): iteration time linear in query tokens,
a discarded context recomputed in chunks that fill what the running batch leaves of the engine's
token budget per iteration (INFERCEPT used its saturation point ``S``; an engine with chunked
prefill recomputes in chunks of its real ``max_num_batched_tokens``, ``preset.token_budget``), each
chunk also paying attention over the context recomputed before it (``CostModel.
prefill_attn_ms_per_mtok2``).  Symbols: C context tokens of the paused request, R tokens held by
running requests, B_run query tokens already scheduled in the iteration, c_h the chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lamps_agent.cost_model import CostModel


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineLoad:
    """What the engine is doing when a waste is evaluated."""

    running_tokens: float  # R: KV tokens held by running requests
    batch_query_tokens: float  # B_run: query tokens of the current iteration


def preserve_waste(context_tokens: float, remaining_tool_time: float) -> float:
    """Keeping C tokens resident for the rest of the call: ``T_remaining · C``."""
    return max(remaining_tool_time, 0.0) * context_tokens


def discard_waste(
    context_tokens: float, load: EngineLoad, cost: CostModel, token_budget: int
) -> float:
    """Recomputing C tokens later in chunks, as coded in INFERCEPT, plus prefill attention::

    c_h = max(budget − B_run, 1); n = max(ceil(C/c_h) − 1, 0); r = C mod c_h
    W = f_s·c_h·n(n+1)/2 + f_ch·n·R + f_last·(R + r) + W_attn
    """
    if context_tokens <= 0:
        return 0.0
    a = cost.prefill_ms_per_token / 1000.0
    c_h = max(token_budget - load.batch_query_tokens, 1.0)
    n = max(math.ceil(context_tokens / c_h) - 1, 0)
    r = math.fmod(context_tokens, c_h)  # as coded (an exact multiple leaves r = 0)
    f_s = (
        cost.prefill_ms_per_token * token_budget + cost.base_ms + cost.prefill_request_ms
    ) / 1000.0
    f_ch = a * c_h
    f_last = a * r
    R = load.running_tokens
    waste = f_s * c_h * n * (n + 1) / 2 + f_ch * n * R + f_last * (R + r)
    return float(waste + _attn_waste(float(n), r, c_h, R, cost))


def _attn_waste(n: Any, r: Any, c_h: float, R: float, cost: CostModel) -> Any:
    """The attention part of recomputing in chunks: full chunk k (1..n) runs
    ``m·c_h·((k−1)·c_h + c_h/2)`` longer while the request holds ``k·c_h`` tokens and the running
    requests ``R``; the last chunk (r tokens after ``n·c_h``) ``m·r·(n·c_h + r/2)`` while
    ``R + r`` are held (the same holders as INFERCEPT's last-chunk term).  Σ(k−½)·k =
    n(n+1)(2n+1)/6 − n(n+1)/4 and Σ(k−½) = n²/2."""
    m = cost.prefill_attn_ms_per_mtok2 * 1e-9  # seconds per product
    if m == 0.0:
        return 0.0 * n
    full = m * c_h * c_h * (c_h * (n * (n + 1) * (2 * n + 1) / 6 - n * (n + 1) / 4) + R * n * n / 2)
    last = m * r * (n * c_h + r / 2) * (R + r)
    return full + last  # float for floats, an array for arrays


def swap_waste(
    context_tokens: float, batch_tokens: float, cost: CostModel, bytes_per_token: int
) -> float:
    """Out and back in: ``2 · T_swap(C) · (C_batch + C)``.

    The paper's form is ``2 · T_swap(C) · C_batch`` (the batch stalls during both copies).  With an
    idle batch that makes a swap free even for a call shorter than the copies, so the request's own
    context, held on the GPU while it is copied out and again while it is copied in, is added —
    the same ``2 · C · t_xfer`` term as LAMPS' memory-over-time area.
    """
    return 2.0 * cost.swap_time(context_tokens * bytes_per_token) * (batch_tokens + context_tokens)


def discard_waste_array(
    context_tokens: np.ndarray, load: EngineLoad, cost: CostModel, token_budget: int
) -> np.ndarray:
    """:func:`discard_waste` over many contexts at once (INFERCEPT re-evaluates every iteration)."""
    C = np.asarray(context_tokens, dtype=np.float64)
    a = cost.prefill_ms_per_token / 1000.0
    c_h = max(token_budget - load.batch_query_tokens, 1.0)
    n = np.maximum(np.ceil(C / c_h) - 1, 0)
    r = np.fmod(C, c_h)
    f_s = (
        cost.prefill_ms_per_token * token_budget + cost.base_ms + cost.prefill_request_ms
    ) / 1000.0
    R = load.running_tokens
    waste = f_s * c_h * n * (n + 1) / 2 + a * c_h * n * R + a * r * (R + r)
    waste = waste + _attn_waste(n, r, c_h, R, cost)
    return np.where(C > 0, waste, 0.0)


def paused_wastes(
    contexts: np.ndarray,
    remaining_time: np.ndarray,
    load: EngineLoad,
    cost: CostModel,
    token_budget: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(preserve, discard) waste of many paused contexts, each with its remaining tool time."""
    preserve = np.maximum(remaining_time, 0.0) * contexts
    return preserve, discard_waste_array(contexts, load, cost, token_budget)
