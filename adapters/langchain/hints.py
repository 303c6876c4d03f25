"""The hint wire format, re-exported from the core (:mod:`lamps_agent.hints`), where both ends —
this middleware and the vLLM plug-in — import it without importing each other's framework."""

from lamps_agent.hints import (
    HINT_VERSION,
    MAX_PRIORITY,
    MAX_SESSION_ID_LENGTH,
    XARGS_PREFIX,
    HintError,
    LampsHints,
    merge_extra_body,
)

__all__ = [
    "HINT_VERSION",
    "MAX_PRIORITY",
    "MAX_SESSION_ID_LENGTH",
    "XARGS_PREFIX",
    "HintError",
    "LampsHints",
    "merge_extra_body",
]
