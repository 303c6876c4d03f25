"""A trace of your own agents from what the tool registry recorded (docs/traces.md).

The LangChain middleware records every model turn (agent, session, step, prompt and output
tokens, the tool the reply called) and the registry times every tool call (tool, session, start,
duration).  :func:`trace_from_registry` joins the two into a trace file in the format
``bench --trace FILE`` reads: one program per session, its turns in step order, each turn's tool
call timed by the recorded call of that tool in that session that followed the turn.

What it cannot know it says: a session whose turns lack prompt sizes, that has no session id, or
whose tool call was never timed (and no other call of that tool either) is left out and counted
by reason.  A turn that ends without a tool call but is followed by another turn (a human's
reply, say) becomes a ``human`` call lasting from that turn's record to the next one's, which
counts the next turn's own model time too (an upper bound).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

CLOCK_SLACK_S = 1.0  # a call recorded as starting this much before its turn still follows it


class TurnLike(Protocol):
    """What is read of a recorded turn (``tool_registry.types.TurnRecord``)."""

    agent: str
    step: int
    output_tokens: int
    created_at: float
    tool: str | None
    prompt_tokens: int | None
    session_id: str | None


class CallLike(Protocol):
    """What is read of a recorded tool call (``tool_registry.types.CallRecord``)."""

    tool: str
    duration: float
    started_at: float
    session_id: str | None


@dataclass(slots=True)
class RegistryTrace:
    """The trace (``programs``: the JSON object to write) and what was left out, by reason."""

    programs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    median_filled: int = 0  # tool calls timed by their tool's median (no call of their own)


def trace_from_registry(turns: Iterable[TurnLike], calls: Iterable[CallLike]) -> RegistryTrace:
    """One program per recorded session (module docstring)."""
    by_session: dict[str, list[TurnLike]] = defaultdict(list)
    out = RegistryTrace()
    for turn in turns:
        if not turn.session_id:
            out.skipped["turn without a session id"] += 1
            continue
        by_session[turn.session_id].append(turn)
    calls_of: dict[str, list[CallLike]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    for call in calls:
        durations[call.tool].append(call.duration)
        if call.session_id:
            calls_of[call.session_id].append(call)
    medians = {tool: statistics.median(d) for tool, d in durations.items()}
    for sid in sorted(by_session):
        session = sorted(by_session[sid], key=lambda t: (t.step, t.created_at))
        if any(t.prompt_tokens is None for t in session):
            out.skipped["session without prompt sizes"] += 1
            continue
        segments = _segments(session, sorted(calls_of.get(sid, []), key=lambda c: c.started_at),
                             medians, out)  # fmt: skip
        if segments is None:
            out.skipped["session with an untimed tool call"] += 1
            continue
        out.programs[f"{session[0].agent}:{sid}"] = segments
    return out


def _segments(
    session: list[TurnLike],
    calls: list[CallLike],
    medians: dict[str, float],
    out: RegistryTrace,
) -> list[dict[str, Any]] | None:
    used: set[int] = set()
    segments: list[dict[str, Any]] = []
    for k, turn in enumerate(session):
        prompt = int(turn.prompt_tokens or 0)
        segment: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": turn.output_tokens}
        if k + 1 < len(session):
            following = session[k + 1]
            if turn.tool is None:
                tool, duration = "human", max(following.created_at - turn.created_at, 0.0)
            else:
                tool = turn.tool
                found = _timed(turn, calls, used)
                if found is None:
                    if tool not in medians:
                        return None
                    found = medians[tool]
                    out.median_filled += 1
                duration = found
            returned = int(following.prompt_tokens or 0) - prompt - turn.output_tokens
            segment.update(tool=tool, api_time=duration, api_token_length=max(returned, 0))
        segments.append(segment)
    return segments


def _timed(turn: TurnLike, calls: list[CallLike], used: set[int]) -> float | None:
    """The duration of the first call of ``turn``'s tool in its session that started after the
    turn was recorded (and was not matched yet)."""
    for i, call in enumerate(calls):
        if i in used or call.tool != turn.tool:
            continue
        if call.started_at >= turn.created_at - CLOCK_SLACK_S:
            used.add(i)
            return call.duration
    return None
