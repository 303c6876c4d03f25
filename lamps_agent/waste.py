"""INFERCEPT's memory-waste equations, in token·seconds (multiply by bytes/token for byte·seconds).

Waste is GPU memory held without doing useful work, times how long.  The forms follow INFERCEPT's
published scheduler (WukLab/InferCept ``scheduler_v2.py``): iteration time linear in query tokens,
a discarded context recomputed in chunks that fill what the running batch leaves of the
saturation point ``S``.  Symbols: C context tokens of the paused request, R tokens held by running
requests, B_run query tokens already scheduled in the iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    context_tokens: float, load: EngineLoad, cost: CostModel, saturation: int
) -> float:
    """Recomputing C tokens later in chunks, as coded in INFERCEPT::

    c_h = max(S − B_run, 1); n = max(ceil(C/c_h) − 1, 0); r = C mod c_h
    W = f_s·c_h·n(n+1)/2 + f_ch·n·R + f_last·(R + r)
    """
    if context_tokens <= 0:
        return 0.0
    a = cost.prefill_ms_per_token / 1000.0
    c_h = max(saturation - load.batch_query_tokens, 1.0)
    n = max(math.ceil(context_tokens / c_h) - 1, 0)
    r = math.fmod(context_tokens, c_h)  # as coded (an exact multiple leaves r = 0)
    f_s = (cost.prefill_ms_per_token * saturation + cost.base_ms) / 1000.0
    f_ch = a * c_h
    f_last = a * r
    R = load.running_tokens
    return f_s * c_h * n * (n + 1) / 2 + f_ch * n * R + f_last * (R + r)


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
    context_tokens: np.ndarray, load: EngineLoad, cost: CostModel, saturation: int
) -> np.ndarray:
    """:func:`discard_waste` over many contexts at once (INFERCEPT re-evaluates every iteration)."""
    C = np.asarray(context_tokens, dtype=np.float64)
    a = cost.prefill_ms_per_token / 1000.0
    c_h = max(saturation - load.batch_query_tokens, 1.0)
    n = np.maximum(np.ceil(C / c_h) - 1, 0)
    r = np.fmod(C, c_h)
    f_s = (cost.prefill_ms_per_token * saturation + cost.base_ms) / 1000.0
    R = load.running_tokens
    waste = f_s * c_h * n * (n + 1) / 2 + a * c_h * n * R + a * r * (R + r)
    return np.where(C > 0, waste, 0.0)


def paused_wastes(
    contexts: np.ndarray,
    remaining_time: np.ndarray,
    load: EngineLoad,
    cost: CostModel,
    saturation: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(preserve, discard) waste of many paused contexts, each with its remaining tool time."""
    preserve = np.maximum(remaining_time, 0.0) * contexts
    return preserve, discard_waste_array(contexts, load, cost, saturation)
