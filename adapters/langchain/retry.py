"""Retrying a model call that a dying replica cut off mid-answer (docs/langchain.md).

Behind vllm-router, a replica that dies while it streams a turn leaves the client with a stream that
ends early: the router already sent ``200`` and some chunks, so it cannot retry the request itself.
The OpenAI SDK (and ``ChatOpenAI``) then raises ``APIConnectionError``, or — when the body ended
cleanly — returns a reply without a finish reason.  :class:`CutRetry` tells such a call apart from
every other failure and decides whether to call the model again: the whole turn from its start (the
partial output never reaches the agent's state), on whatever replica the router now gives the
session.  Every retry is counted, logged and, inside a LangGraph run, written to the ``custom``
stream, so a streaming UI can drop the partial message it already showed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from langchain_core.messages import BaseMessage

logger = logging.getLogger(__name__)

# Exception classes (by name, anywhere in the MRO: no import of openai or httpx needed) that mean
# the connection ended before the answer did.  APIConnectionError covers the OpenAI SDK's
# APITimeoutError; TransportError is httpx's base of RemoteProtocolError, ReadError, ConnectError.
CUT_ERRORS = frozenset(
    {"APIConnectionError", "TransportError", "IncompleteRead", "ConnectionError"}
)


class StreamCutError(ConnectionError):
    """An OpenAI-compatible reply that carries no finish reason: its stream ended early."""


def is_cut(exc: BaseException) -> bool:
    """Whether ``exc`` means the model's answer was cut off (not refused, not invalid)."""
    return any(kind.__name__ in CUT_ERRORS for kind in type(exc).__mro__)


def check_complete(reply: BaseMessage | None) -> None:
    """Raise :class:`StreamCutError` for a reply from an OpenAI-compatible server (``ChatOpenAI``
    marks them ``model_provider="openai"``) that has no ``finish_reason``: every complete answer
    from vLLM has one, a stream cut before its last chunk has none."""
    if reply is None:
        return
    meta = reply.response_metadata
    if meta.get("model_provider") == "openai" and not meta.get("finish_reason"):
        raise StreamCutError("the model's reply ended without a finish reason")


class CutRetry:
    """How often a cut model call is tried again, and how many times it was."""

    def __init__(self, *, retries: int, delay_s: float) -> None:
        if retries < 0:
            raise ValueError(f"model_retries must be >= 0, got {retries}")
        if delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0, got {delay_s}")
        self.retries = retries
        self.delay_s = delay_s
        self._num_retries = 0
        self._lock = threading.Lock()

    @property
    def num_retries(self) -> int:
        """Model calls tried again since this middleware was made."""
        return self._num_retries

    def again(self, exc: BaseException, *, attempt: int, session_id: str) -> bool:
        """After ``attempt`` (0 = the first call) failed with ``exc``: retry?  Counts, logs and
        announces a retry; False for any other failure and once the retries are spent."""
        if not is_cut(exc) or attempt >= self.retries:
            return False
        with self._lock:
            self._num_retries += 1
        logger.warning(
            "lamps: model call of session %s cut off (%s: %s); calling it again from the start "
            "(retry %d of %d), its partial output is discarded",
            session_id, type(exc).__name__, exc, attempt + 1, self.retries,
        )  # fmt: skip
        _announce({"session_id": session_id, "retry": attempt + 1, "error": type(exc).__name__})
        return True

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt + 1`` (the router needs a moment to see the death)."""
        return float(self.delay_s * 2**attempt)


def _announce(event: dict[str, Any]) -> None:
    """Write ``{"lamps_model_retry": event}`` to LangGraph's ``custom`` stream, if in a run."""
    try:
        from langgraph.config import get_stream_writer

        get_stream_writer()({"lamps_model_retry": event})
    except (ImportError, RuntimeError, KeyError):  # not inside a LangGraph run
        return


__all__ = ["CUT_ERRORS", "CutRetry", "StreamCutError", "check_complete", "is_cut"]
