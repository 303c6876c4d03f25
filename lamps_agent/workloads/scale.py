"""Shrinking a workload to fit a small engine: token counts scaled, programs that do not fit left out.

A long-context workload (``longctx``: contexts from ~4k to 40–60k tokens, a tail to 128k) does not
fit the tiny local model of the CPU engine (an 8k position limit, a KV pool of a few thousand
tokens).  :func:`scale_tokens` multiplies every token count of the programs by one factor — the
first prompt, each turn's output and each tool's return — so the contexts keep their shape (turns,
growth per turn relative to the start, tails) at a size the engine can hold.  Tool durations are
not touched: the replay's ``time_scale`` scales those.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction

from lamps_agent.program import Program, Segment


def parse_scale(text: str, flag: str) -> float:
    """``"0.03125"`` or ``"1/32"`` → a positive finite factor; a bad value is a one-line error
    naming ``flag``."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{flag}: {text!r} is not a number or a fraction like 1/32") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag}: {text!r} must be positive")
    return value


def scale_tokens(programs: Sequence[Program], factor: float) -> list[Program]:
    """The programs with every token count multiplied by ``factor``.

    Rounded on the running context, not per count, so a program's contexts stay within a token
    of ``factor ×`` the original's (plus one per output raised to its minimum of one token): a
    program that peaked at 128k peaks at about 4k with ``factor = 1/32``.  Each turn keeps at
    least one output token; a tool may return none.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"token scale must be a positive finite number, got {factor}")
    if factor == 1:
        return list(programs)
    return [_scaled(p, factor) for p in programs]


def _scaled(program: Program, factor: float) -> Program:
    mark = program.segments[0].prompt_tokens  # the original context so far
    prompt = max(round(mark * factor), 1)
    segments: list[Segment] = []
    for seg in program.segments:
        mark += seg.output_tokens
        output = max(round(mark * factor) - prompt, 1)
        mark += seg.returned_tokens
        returned = max(round(mark * factor) - prompt - output, 0) if seg.has_tool_call else 0
        segments.append(
            dataclasses.replace(
                seg, prompt_tokens=prompt, output_tokens=output, returned_tokens=returned
            )
        )
        prompt += output + returned
    return dataclasses.replace(program, segments=tuple(segments))


def fitting(programs: Sequence[Program], max_model_len: int) -> list[Program]:
    """The programs whose final context (last prompt + its output) stays under ``max_model_len``:
    a server refuses a longer request."""
    return [p for p in programs if p.segments[-1].context_at_pause < max_model_len]
