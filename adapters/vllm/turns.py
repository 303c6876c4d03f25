"""What the plug-in knows about each request: its hints, or the core's estimate from its session.

Hints arrive in the wire format of :mod:`lamps_agent.hints` (``priority``, ``session_id`` and
``lamps_*`` entries of ``vllm_xargs``).  A request without them — or with malformed ones, which
are logged and counted, never raised — is predicted by the core from its session's history
(:class:`lamps_agent.predictors.session.SessionTable`); this module only reads and counts.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lamps_agent.hints import (
    MAX_PRIORITY,
    MAX_SESSION_ID_LENGTH,
    HintError,
    LampsHints,
    tenant_of,
)
from lamps_agent.predictors.session import SessionHistory, SessionTable
from lamps_agent.request import KVStrategy

log = logging.getLogger("lamps.vllm")
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
    tenant: str | None = None  # the hinted client (the core's fair share); None: no tenant


@dataclass(slots=True)
class HintCounters:
    ok: int = 0
    missing: int = 0
    malformed: int = 0
    final_then_continued: int = 0  # hinted "final answer", yet the session's next turn came
    reasons: dict[str, int] = field(default_factory=dict)


class TurnTracker:
    def __init__(
        self, *, default_output_tokens: int, clock: Callable[[], float] = time.time
    ) -> None:
        """``clock``: seconds now (wall time served; the virtual-clock engine's own clock)."""
        self.default_output_tokens = default_output_tokens
        self.clock = clock
        self.history = SessionTable()
        self.counters = HintCounters()

    @property
    def sessions(self) -> dict[str, SessionHistory]:
        return self.history.sessions

    @property
    def session_bytes(self) -> int:
        return self.history.session_bytes

    def session(self, session_id: str | None, now: float) -> SessionHistory | None:
        hist = self.history.arrived(session_id, now)
        self.counters.final_then_continued = self.history.surprises
        return hist

    def read(
        self, xargs: Any, session_id: Any, priority: Any, max_tokens: int | None,
        arrived_at: float | None = None,
    ) -> TurnInfo:  # fmt: skip
        """Hints if well-formed, else a server-side estimate.  Never raises.  ``arrived_at``:
        when the request reached the server (vLLM's ``arrival_time``, on the same clock), which
        the engine may see only at its next step; default: now."""
        now = self.clock() if arrived_at is None else min(float(arrived_at), self.clock())
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
                    tenant=hints.tenant,
                )
        else:
            self.counters.missing += 1
        return self._estimate(sid, now, max_tokens, tenant=tenant_of(xargs))

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

    def _estimate(
        self, sid: str | None, now: float, max_tokens: int | None, *, tenant: str | None
    ) -> TurnInfo:
        est = self.history.estimate(
            sid, now, default_output=float(self.default_output_tokens), max_tokens=max_tokens
        )
        self.counters.final_then_continued = self.history.surprises
        return TurnInfo(
            sid, est.output_tokens, est.tool, est.tool_duration, None, hinted=False, step=est.step,
            tenant=tenant,
        )  # fmt: skip

    def mean_gap(self, session_id: str | None) -> float | None:
        return self.history.mean_gap(session_id)

    def may_continue(self, info: TurnInfo) -> bool:
        return self.history.may_continue(info.session_id, hinted=info.hinted, tool=info.tool)

    def turn_ended(self, info: TurnInfo, output_tokens: int) -> None:
        self.history.turn_ended(
            info.session_id,
            output_tokens,
            self.clock(),
            hinted_final=info.hinted and info.tool is None,
        )
