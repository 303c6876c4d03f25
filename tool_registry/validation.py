"""Input checks of ``register``, ``record`` and ``record_turn``: bad input is a ``ValueError`` at
the call site."""

from __future__ import annotations

import math

MAX_NAME_LENGTH = 200
MAX_LABEL_LENGTH = 255
MAX_SIZE = 10**12  # tokens or bytes; anything larger is a bug in the caller, not a real payload
MAX_DURATION = 7 * 24 * 3600.0  # a week: a tool call longer than that is a unit mix-up
MAX_TURN_TOKENS = 10**8  # tokens in one model turn; more is a bug (bytes, or a running total)
MAX_STEP = 10**6  # model calls in one conversation
MAX_PROMPT_TEXT = 2_000  # characters of prompt text kept: the tail, where the last turns are


def check_name(name: object, what: str = "tool name") -> str:
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters: {name[:40]!r}...")
    return name


def check_duration(value: object, what: str = "duration") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number of seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0 seconds, got {value}")
    if value > MAX_DURATION:
        raise ValueError(f"{what} of {value} s is more than a week; is it in milliseconds?")
    return value


def check_size(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{what} must be between 0 and {MAX_SIZE}, got {value}")
    return value


def check_label(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string or None, got {type(value).__name__}")
    if len(value) > MAX_LABEL_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_LABEL_LENGTH} characters")
    return value


def check_timestamp(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"started_at must be epoch seconds, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"started_at must be finite epoch seconds, got {value}")
    return value


def check_count(
    value: object, what: str, *, minimum: int = 0, maximum: int = MAX_TURN_TOKENS
) -> int:
    """An ``int`` (not ``bool``) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{what} must be between {minimum} and {maximum}, got {value}")
    return value


def clip_prompt_text(value: object) -> str | None:
    """The last ``MAX_PROMPT_TEXT`` characters of ``value``, storable by both databases (NUL
    characters and lone surrogates would fail every write attempt, so they are replaced)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"prompt_text must be a string or None, got {type(value).__name__}")
    tail = value[-MAX_PROMPT_TEXT:].replace("\x00", "\ufffd")
    return tail.encode("utf-8", "replace").decode("utf-8")
