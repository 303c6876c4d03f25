"""Input checks of ``register``, ``record`` and ``record_turn``: bad input is a ``ValueError`` at
the call site, never another exception type.

Text a database cannot store (a NUL character: PostgreSQL; a lone surrogate, as JSON ``"\ud800"``
decodes: both) would fail every write of its batch, so it is sanitised here: each such character
becomes U+FFFD, and :func:`clean_text` tells the caller so it can count it.  Numbers may be any
real (``numpy.float32``, ``numpy.int64``...) and are stored as plain ``float`` / ``int``.
"""

from __future__ import annotations

import math
import numbers
import operator

MAX_NAME_LENGTH = 200
MAX_LABEL_LENGTH = 255
MAX_SIZE = 10**12  # tokens or bytes; anything larger is a bug in the caller, not a real payload
MAX_DURATION = 7 * 24 * 3600.0  # a week: a tool call longer than that is a unit mix-up
MAX_TURN_TOKENS = 10**8  # tokens in one model turn; more is a bug (bytes, or a running total)
MAX_STEP = 10**6  # model calls in one conversation
MAX_PROMPT_TEXT = 2_000  # characters of prompt text kept: the tail, where the last turns are
MAX_TIMESTAMP = 4_102_444_800.0  # 2100-01-01: a later start time is a unit mix-up (ms, ns)
REPLACEMENT = "\ufffd"


def is_clean(text: str) -> bool:
    """Whether both databases can store ``text`` as it is (the fast path: ASCII without NUL)."""
    if text.isascii():
        return "\x00" not in text
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str) -> str:
    """``text`` (as a plain ``str``) with NUL characters and lone surrogates replaced by U+FFFD;
    the very same object when nothing needed replacing."""
    if type(text) is str and is_clean(text):
        return text
    text = str(text).replace("\x00", REPLACEMENT)
    if is_clean(text):
        return text
    return "".join(REPLACEMENT if "\ud800" <= char <= "\udfff" else char for char in text)


def _real(value: object, what: str, unit: str) -> float:
    """``value`` as a ``float``: any real number but ``bool``; a ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number of {unit}, got {type(value).__name__}")
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{what} must be a finite number of {unit}, got {value!r:.40}") from None


def _integer(value: object, what: str) -> int:
    """``value`` as an ``int``: any integral number (``numpy.int64`` too) but ``bool``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int, got {type(value).__name__}")
    return operator.index(value)


def check_name(name: object, what: str = "tool name") -> str:
    """A non-blank name of at most ``MAX_NAME_LENGTH`` characters, sanitised (:func:`clean_text`)."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters: {name[:40]!r}...")
    return clean_text(name)


def is_plain_name(value: object) -> bool:
    """Whether :func:`check_name` would return ``value`` itself (a ``str``, non-blank, short,
    ASCII without NUL): the fast path of a hot caller, which calls ``check_name`` otherwise."""
    return (
        type(value) is str
        and 0 < len(value) <= MAX_NAME_LENGTH
        and value.isascii()
        and not value.isspace()
        and "\x00" not in value
    )


def is_plain_label(value: object) -> bool:
    """Whether :func:`check_label` would return ``value`` itself (``None``, or a short ASCII
    ``str`` without NUL)."""
    return value is None or (
        type(value) is str
        and len(value) <= MAX_LABEL_LENGTH
        and value.isascii()
        and "\x00" not in value
    )


def check_duration(value: object, what: str = "duration") -> float:
    value = _real(value, what, "seconds")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0 seconds, got {value}")
    if value > MAX_DURATION:
        raise ValueError(f"{what} of {value} s is more than a week; is it in milliseconds?")
    return value


def check_size(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an int or None, got {type(value).__name__}")
    value = operator.index(value)
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
    return clean_text(value)


def check_timestamp(value: object) -> float:
    value = _real(value, "started_at", "epoch seconds")
    if not math.isfinite(value) or not 0 <= value <= MAX_TIMESTAMP:
        raise ValueError(
            f"started_at must be epoch seconds before the year 2100, got {value} "
            "(milliseconds or nanoseconds?)"
        )
    return value


def check_count(
    value: object, what: str, *, minimum: int = 0, maximum: int = MAX_TURN_TOKENS
) -> int:
    """An ``int`` (not ``bool``) in ``[minimum, maximum]``."""
    value = _integer(value, what)
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
    return clean_text(value[-MAX_PROMPT_TEXT:])
