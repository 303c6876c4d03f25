"""What the plug-in knows about each request: its hints, or a server-side estimate.

Hints arrive in the wire format of :mod:`lamps_agent.hints` (``priority``, ``session_id`` and
``lamps_*`` entries of ``vllm_xargs``).  A request without them — or with malformed ones, which
are logged and counted, never raised — gets an estimate from its session's history: the mean
output of its earlier turns, and, if earlier turns were followed by another request of the same
session, a tool call whose duration is the mean gap between the end of one turn and the arrival of
the next.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from lamps_agent.hints import MAX_PRIORITY, MAX_SESSION_ID_LENGTH, HintError, LampsHints
from lamps_agent.request import KVStrategy

log = logging.getLogger("lamps.vllm")
# What the tracker may keep, bounded by bytes as well as by count: session ids come from clients.
_MAX_SESSIONS = 100_000
_MAX_SESSION_BYTES = 16 * 2**20
_SESSION_OVERHEAD = 200  # bytes of a SessionHistory and its dict slot, roughly
_MAX_REASONS = 64
_MAX_STEP = 1_000_000  # a hinted turn index beyond any session's (hints allow int32)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)", re.IGNORECASE)


def reason_class(message: str) -> str:
    """A malformed hint's reason without the offending value, so counts stay bounded:
    ``hint lamps_step must be int, got 'x'`` → ``hint lamps_step must be int``."""
    head = message.split(", got")[0]
    head = _NUMBER.sub("N", _QUOTED.sub("S", head))
    return head[:80]


@dataclass(frozen=True, slots=True)
class TurnInfo:
    session_id: str | None
    output_tokens: float
    tool: str | None
    tool_duration: float
    strategy: KVStrategy | None  # from the hints; None: let the policy choose
    hinted: bool
    agent: str | None = None  # the hinted agent name
    step: int = 0  # the turn's index in its session: hinted, else the session's turns so far


@dataclass(slots=True)
class SessionHistory:
    first_arrival: float
    turns: int = 0
    output_sum: float = 0.0
    gaps: int = 0
    gap_sum: float = 0.0
    last_end: float | None = None
    last_hinted_final: bool = False  # the last turn's hints said "final answer"
    surprises: int = 0  # ... and yet the session came back: that was a tool call


@dataclass(slots=True)
class HintCounters:
    ok: int = 0
    missing: int = 0
    malformed: int = 0
    final_then_continued: int = 0  # hinted "final answer", yet the session's next turn came
    reasons: dict[str, int] = field(default_factory=dict)


class TurnTracker:
    def __init__(self, *, default_output_tokens: int) -> None:
        self.default_output_tokens = default_output_tokens
        self.sessions: dict[str, SessionHistory] = {}
        self.session_bytes = 0
        self.counters = HintCounters()

    def session(self, session_id: str | None, now: float) -> SessionHistory | None:
        if session_id is None:
            return None
        hist = self.sessions.get(session_id)
        if hist is None:
            cost = len(session_id) + _SESSION_OVERHEAD
            if (
                len(self.sessions) >= _MAX_SESSIONS
                or self.session_bytes + cost > _MAX_SESSION_BYTES
            ):
                self._forget_oldest_half()
            hist = self.sessions[session_id] = SessionHistory(first_arrival=now)
            self.session_bytes += cost
        elif hist.last_end is not None:
            hist.gaps += 1
            hist.gap_sum += max(now - hist.last_end, 0.0)
            hist.last_end = None
            if hist.last_hinted_final:
                hist.surprises += 1
                self.counters.final_then_continued += 1
        return hist

    def _forget_oldest_half(self) -> None:
        for key in list(self.sessions)[: max(len(self.sessions) // 2, 1)]:
            del self.sessions[key]
            self.session_bytes -= len(key) + _SESSION_OVERHEAD

    def read(self, xargs: Any, session_id: Any, priority: Any, max_tokens: int | None) -> TurnInfo:
        """Hints if well-formed, else a server-side estimate.  Never raises."""
        now = time.time()
        sid = None
        if isinstance(session_id, str) and session_id:
            if len(session_id) <= MAX_SESSION_ID_LENGTH:
                sid = session_id
            else:  # never kept: a client must not grow the engine by sending huge ids
                self._malformed(f"session_id is longer than {MAX_SESSION_ID_LENGTH} characters")
        if isinstance(priority, int) and not isinstance(priority, bool):
            # vLLM accepts any int; the hints' range is int32.  Clamp, don't drop the hints.
            priority = min(max(priority, -MAX_PRIORITY - 1), MAX_PRIORITY)
        else:
            priority = None
        if isinstance(xargs, dict) and any(str(k).startswith("lamps_") for k in xargs):
            try:
                hints = LampsHints.from_xargs(xargs, session_id=sid, priority=priority)
            except (HintError, TypeError, ValueError) as exc:
                self._malformed(str(exc))
            else:
                self.counters.ok += 1
                self.session(hints.session_id, now)
                return TurnInfo(
                    session_id=hints.session_id,
                    output_tokens=float(hints.output_tokens),
                    tool=hints.tool,
                    tool_duration=hints.tool_duration,
                    strategy=hints.kv_strategy,
                    hinted=True,
                    agent=hints.agent,
                    step=min(hints.step, _MAX_STEP),
                )
        else:
            self.counters.missing += 1
        return self._estimate(sid, now, max_tokens)

    def _malformed(self, reason: str) -> None:
        self.counters.malformed += 1
        key = reason_class(reason)
        reasons = self.counters.reasons
        if key not in reasons and len(reasons) >= _MAX_REASONS:
            key = "other"
        reasons[key] = reasons.get(key, 0) + 1
        if self.counters.malformed <= 20 or self.counters.malformed % 1000 == 0:
            log.warning(  # the reason quotes the client's value: a 1 MB value, a 1 MB line
                "ignoring malformed lamps hints (%d so far): %.300s",
                self.counters.malformed,
                reason,
            )

    def _estimate(self, sid: str | None, now: float, max_tokens: int | None) -> TurnInfo:
        hist = self.session(sid, now)
        output = float(self.default_output_tokens)
        tool, duration = None, 0.0
        if hist is not None and hist.turns:
            output = hist.output_sum / hist.turns
        if hist is not None and hist.gaps:
            tool, duration = "unknown", hist.gap_sum / hist.gaps
        if max_tokens is not None and max_tokens > 0:
            output = min(output, float(max_tokens))
        step = hist.turns if hist is not None else 0
        return TurnInfo(sid, max(output, 1.0), tool, duration, None, hinted=False, step=step)

    def mean_gap(self, session_id: str | None) -> float | None:
        """The session's mean pause between a turn's end and its next turn (None: no history)."""
        hist = self.sessions.get(session_id) if session_id else None
        if hist is None or not hist.gaps:
            return None
        return hist.gap_sum / hist.gaps

    def may_continue(self, info: TurnInfo) -> bool:
        """Whether the session may come back after this turn, so its KV deserves a decision:
        a predicted tool call; no hints at all (nobody said it was the end); or a session that
        already came back after a turn hinted as its final answer."""
        if info.session_id is None:
            return False
        if info.tool is not None or not info.hinted:
            return True
        hist = self.sessions.get(info.session_id)
        return hist is not None and hist.surprises > 0

    def turn_ended(self, info: TurnInfo, output_tokens: int) -> None:
        hist = self.sessions.get(info.session_id) if info.session_id else None
        if hist is not None:
            hist.turns += 1
            hist.output_sum += output_tokens
            hist.last_end = time.time()
            hist.last_hinted_final = info.hinted and info.tool is None
