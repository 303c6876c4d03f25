"""LAMPS' ranking key: a turn's predicted memory consumption over time (token·seconds).

Decode adds one token of KV per iteration of length ``tau``; a prefill of ``x`` tokens on top of
``c0`` resident ones holds about ``c0 + x/2`` tokens for its duration.  What happens during the
tool call depends on the strategy: preserve holds the whole context for the call, swap holds it
while it is copied out and back, discard holds nothing but recomputes the context afterwards::

    Preserve: A_pf(0,P) + A_dec(P,O1) + C1·T        + A_pf(C1,R) + A_dec(C1+R,O2)
    Discard : A_pf(0,P) + A_dec(P,O1)               + A_pf(0,C1+R) + A_dec(C1+R,O2)
    Swap    : A_pf(0,P) + A_dec(P,O1) + 2·C1·t_xfer + A_pf(C1,R) + A_dec(C1+R,O2)

with ``C1 = P + O1``.  A turn without a tool call is ``A_pf(0,P) + A_dec(P,O1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lamps_agent.request import KVStrategy


def area_decode(c0: float, output: float, tau: float) -> float:
    """KV grows from ``c0`` by one token per step for ``output`` steps of ``tau`` seconds."""
    return tau * (c0 * output + output * (output - 1) / 2)


def area_prefill(c0: float, tokens: float, prefill_seconds: float) -> float:
    return prefill_seconds * (c0 + tokens / 2)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnShape:
    """A turn as predicted: prompt P, output O1 before the tool, tool time T, return R, output
    O2 after it (LAMPS' code reuses O1 for O2)."""

    prompt: float
    output: float
    has_tool: bool
    tool_duration: float = 0.0
    returned: float = 0.0
    next_output: float = 0.0
    resident: float = 0.0  # tokens whose KV is already resident (a preserved or swapped context)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How time is estimated for the area: a decode step, a prefill, and a one-way transfer."""

    tau: float
    prefill_seconds: Callable[[float], float]
    transfer_seconds: Callable[[float], float]  # tokens -> seconds


def tool_phase(
    context: float, strategy: KVStrategy, tool_duration: float, timing: Timing
) -> tuple[float, float]:
    """While a tool runs: the area ``context`` tokens of KV hold under ``strategy`` (preserve:
    the whole call; swap: the copy out and back; discard: nothing), and the tokens resident
    when the next turn starts."""
    if strategy is KVStrategy.PRESERVE:
        return context * tool_duration, context
    if strategy is KVStrategy.SWAP:
        return 2 * context * timing.transfer_seconds(context), context
    return 0.0, 0.0


def turn_area(turn: TurnShape, strategy: KVStrategy, timing: Timing) -> float:
    new = max(turn.prompt - turn.resident, 0.0)
    area = area_prefill(turn.resident, new, timing.prefill_seconds(new))
    area += area_decode(turn.prompt, turn.output, timing.tau)
    if not turn.has_tool:
        return area
    c1 = turn.prompt + turn.output
    held, resumed_from = tool_phase(c1, strategy, turn.tool_duration, timing)
    area += held
    refill = c1 + turn.returned - resumed_from
    area += area_prefill(resumed_from, refill, timing.prefill_seconds(refill))
    area += area_decode(c1 + turn.returned, turn.next_output, timing.tau)
    return area
