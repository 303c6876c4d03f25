"""Turn predictions from a session's own history, for turns that arrive without hints.

A serving engine sees each turn of an agent as a request of its own.  When a request carries no
(or malformed) hints, its turn is predicted from what its session did before: the mean output of
its earlier turns and, once the session came back after a turn, a tool call whose duration is the
mean gap between the end of one turn and the arrival of the next.  The table is bounded by count
and by bytes (session ids come from clients): past either bound the oldest half is forgotten.

Both engines can use it; the vLLM plug-in feeds it the turns it sees and asks it for the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SESSIONS = 100_000
MAX_SESSION_BYTES = 16 * 2**20
SESSION_OVERHEAD = 200  # bytes of a SessionHistory and its dict slot, roughly


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


@dataclass(frozen=True, slots=True)
class TurnEstimate:
    """A turn predicted from its session's history."""

    output_tokens: float
    tool: str | None  # "unknown" once the session has come back after a turn
    tool_duration: float
    step: int  # the session's turns so far


class SessionTable:
    """Session id → :class:`SessionHistory`, bounded by :data:`MAX_SESSIONS` and
    :data:`MAX_SESSION_BYTES`."""

    def __init__(
        self, *, max_sessions: int = MAX_SESSIONS, max_bytes: int = MAX_SESSION_BYTES
    ) -> None:
        self.sessions: dict[str, SessionHistory] = {}
        self.session_bytes = 0
        self.surprises = 0  # sessions that came back after a turn hinted as their last
        self._max_sessions = max_sessions
        self._max_bytes = max_bytes

    def get(self, session_id: str | None) -> SessionHistory | None:
        return self.sessions.get(session_id) if session_id else None

    def arrived(self, session_id: str | None, now: float) -> SessionHistory | None:
        """A turn of ``session_id`` arrived at ``now``: its history, created or updated (the gap
        since the session's last turn ended is recorded)."""
        if session_id is None:
            return None
        hist = self.sessions.get(session_id)
        if hist is None:
            cost = len(session_id) + SESSION_OVERHEAD
            if (
                len(self.sessions) >= self._max_sessions
                or self.session_bytes + cost > self._max_bytes
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
                self.surprises += 1
        return hist

    def _forget_oldest_half(self) -> None:
        for key in list(self.sessions)[: max(len(self.sessions) // 2, 1)]:
            del self.sessions[key]
            self.session_bytes -= len(key) + SESSION_OVERHEAD

    def estimate(
        self, session_id: str | None, now: float, *, default_output: float, max_tokens: int | None
    ) -> TurnEstimate:
        """The next turn of ``session_id``, arriving at ``now``, from its history."""
        hist = self.arrived(session_id, now)
        output = default_output
        tool, duration = None, 0.0
        if hist is not None and hist.turns:
            output = hist.output_sum / hist.turns
        if hist is not None and hist.gaps:
            tool, duration = "unknown", hist.gap_sum / hist.gaps
        if max_tokens is not None and max_tokens > 0:
            output = min(output, float(max_tokens))
        step = hist.turns if hist is not None else 0
        return TurnEstimate(max(output, 1.0), tool, duration, step)

    def mean_gap(self, session_id: str | None) -> float | None:
        """The session's mean pause between a turn's end and its next turn (None: no history)."""
        hist = self.get(session_id)
        if hist is None or not hist.gaps:
            return None
        return hist.gap_sum / hist.gaps

    def may_continue(self, session_id: str | None, *, hinted: bool, tool: str | None) -> bool:
        """Whether the session may come back after this turn, so its KV deserves a decision:
        a predicted tool call; no hints at all (nobody said it was the end); or a session that
        already came back after a turn hinted as its final answer."""
        if session_id is None:
            return False
        if tool is not None or not hinted:
            return True
        hist = self.sessions.get(session_id)
        return hist is not None and hist.surprises > 0

    def turn_ended(
        self, session_id: str | None, output_tokens: int, now: float, *, hinted_final: bool
    ) -> None:
        hist = self.get(session_id)
        if hist is not None:
            hist.turns += 1
            hist.output_sum += output_tokens
            hist.last_end = now
            hist.last_hinted_final = hinted_final
