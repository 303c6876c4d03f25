"""Choosing how to treat a turn's KV during its tool call: least predicted waste (LAMPS / INFERCEPT).

``choose_strategy`` is what the LangChain middleware puts in its hints and what the LAMPS policy
applies at the start of a turn: ``argmin(W_preserve, W_swap, W_discard)`` at ``C = P + Ô``.
Without a live engine to look at (a remote client), the load defaults to a busy engine: a quarter
of the KV capacity held by running requests and half the saturation point already scheduled.
"""

from __future__ import annotations

from collections.abc import Callable

from lamps_agent.presets import Preset, load_preset
from lamps_agent.request import KVStrategy
from lamps_agent.waste import EngineLoad, discard_waste, preserve_waste, swap_waste

# Ties go to the cheapest mechanism: preserving costs nothing to execute, swapping costs copies.
_TIE_ORDER = (KVStrategy.PRESERVE, KVStrategy.SWAP, KVStrategy.DISCARD)


def default_load(preset: Preset) -> EngineLoad:
    return EngineLoad(
        running_tokens=preset.gpu_kv_tokens / 4, batch_query_tokens=preset.saturation_tokens / 2
    )


def strategy_wastes(
    *,
    context_tokens: float,
    tool_duration: float,
    preset: Preset,
    load: EngineLoad,
    swap_allowed: bool = True,
) -> dict[KVStrategy, float]:
    """Waste (token·seconds) of each strategy for one paused context."""
    wastes = {
        KVStrategy.PRESERVE: preserve_waste(context_tokens, tool_duration),
        KVStrategy.DISCARD: discard_waste(context_tokens, load, preset.cost, preset.token_budget),
    }
    if swap_allowed:
        wastes[KVStrategy.SWAP] = swap_waste(
            context_tokens, load.running_tokens, preset.cost, preset.kv_bytes_per_token
        )
    return wastes


def pick_least(wastes: dict[KVStrategy, float]) -> KVStrategy:
    return min((s for s in _TIE_ORDER if s in wastes), key=lambda s: wastes[s])


def choose_strategy(
    *,
    context_tokens: float,
    tool_duration: float,
    preset: Preset | str = "a100-gptj6b",
    load: EngineLoad | None = None,
    swap_allowed: bool = True,
) -> KVStrategy:
    """The least-waste strategy for a context of ``context_tokens`` paused ``tool_duration`` s."""
    if not context_tokens >= 0 or not tool_duration >= 0:
        raise ValueError("context_tokens and tool_duration must be >= 0")
    p = load_preset(preset) if isinstance(preset, str) else preset
    wastes = strategy_wastes(
        context_tokens=context_tokens,
        tool_duration=tool_duration,
        preset=p,
        load=load if load is not None else default_load(p),
        swap_allowed=swap_allowed,
    )
    return pick_least(wastes)


def least_waste_rule(
    preset: Preset, load: EngineLoad | None = None, *, swap_allowed: bool = True
) -> Callable[[float, float], KVStrategy]:
    """:func:`choose_strategy` for one preset and load: ``rule(context_tokens, tool_duration)``
    gives the same strategy (same wastes, same tie order), with what depends on the preset and the
    load looked up once and no per-call dict of wastes (it runs on every model call of an agent)."""
    engine_load = load if load is not None else default_load(preset)
    cost, budget, running = preset.cost, preset.token_budget, engine_load.running_tokens
    bytes_per_token = preset.kv_bytes_per_token
    preserve_, swap_, discard_ = _TIE_ORDER

    def rule(context_tokens: float, tool_duration: float) -> KVStrategy:
        if not context_tokens >= 0 or not tool_duration >= 0:
            raise ValueError("context_tokens and tool_duration must be >= 0")
        best, least = preserve_, preserve_waste(context_tokens, tool_duration)
        if swap_allowed:  # min() over the tie order: a later strategy must be strictly less
            swap = swap_waste(context_tokens, running, cost, bytes_per_token)
            if swap < least:
                best, least = swap_, swap
        if discard_waste(context_tokens, engine_load, cost, budget) < least:
            best = discard_
        return best

    return rule
