"""What the learned predictor reads: turn records, length bins, the text window, cheap features.

Everything here is plain Python / numpy, so records can be built and stored without the extra.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

N_BINS = 50  # LAMPS: 50 bins of 10 tokens; the last bin also holds everything longer
BIN_WIDTH = 10
MAX_STEP = 8  # steps >= MAX_STEP share one bucket
TEXT_CHARS = 1200  # the prompt's tail fed to the encoder: the last turns of the context
UNKNOWN = "<unk>"
FINAL = "<final>"  # a turn that ends the program (no tool call)


def bin_of(tokens: float) -> int:
    """The length bin of ``tokens`` (bin k holds [10k, 10k + 10); the last bin is open-ended)."""
    return min(max(int(tokens // BIN_WIDTH), 0), N_BINS - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRecord:
    """One finished model turn: the training unit.  ``group`` is the conversation the turn belongs
    to; splits never separate the turns of one group."""

    agent: str
    step: int
    tool: str | None
    prompt_tokens: int
    output_tokens: int
    prompt_text: str | None = None
    group: str = ""


def text_window(text: object, chars: int = TEXT_CHARS) -> str | None:
    """The encoder's input: the prompt's last ``chars`` characters, or ``None`` for no usable text
    (not a string, empty, or whitespace only)."""
    if not isinstance(text, str):
        return None
    tail = text[-chars:].strip()
    return tail or None


_CODE_CHARS = "{}()[];=<>_/\\|`$#*"
_ASCII_LETTERS = string.ascii_letters
N_TEXT_STATS = 6


def text_stats(window: str | None) -> np.ndarray:
    """Character statistics of the window (zeros without text): non-ASCII, letters, digits, code
    punctuation, whitespace fractions and log length.  They carry the language and register (code,
    CJK, prose) that set how many tokens a reply of a given size takes."""
    out = np.zeros(N_TEXT_STATS, dtype=np.float32)
    if not window:
        return out
    n = len(window)
    ascii_part = window.encode("ascii", "ignore").decode()
    out[0] = (n - len(ascii_part)) / n
    out[1] = sum(map(ascii_part.count, _ASCII_LETTERS)) / n
    out[2] = sum(map(ascii_part.count, "0123456789")) / n
    out[3] = sum(map(ascii_part.count, _CODE_CHARS)) / n
    out[4] = sum(map(window.count, " \t\n\r")) / n
    out[5] = math.log1p(n) / 10.0
    return out


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The vocabulary of the cheap features, fixed at training time and saved with the model."""

    agents: tuple[str, ...]
    tools: tuple[str, ...]

    @classmethod
    def from_records(cls, records: Iterable[TurnRecord]) -> FeatureSpec:
        recs = list(records)
        agents = sorted({r.agent for r in recs})
        tools = sorted({r.tool or FINAL for r in recs})
        return cls(agents=(*agents, UNKNOWN), tools=(*tools, UNKNOWN))

    @property
    def dim(self) -> int:
        return len(self.agents) + len(self.tools) + (MAX_STEP + 1) + 2

    def vector(
        self, *, agent: object, step: object, tool: object, prompt_tokens: object, has_text: bool
    ) -> np.ndarray:
        """Cheap features of one turn; odd values (wrong types, negatives, NaN) map to neutral."""
        out = np.zeros(self.dim, dtype=np.float32)
        out[_index(self.agents, agent)] = 1.0
        base = len(self.agents)
        tool_name = FINAL if tool is None else tool
        out[base + _index(self.tools, tool_name)] = 1.0
        base += len(self.tools)
        out[base + min(_as_int(step), MAX_STEP)] = 1.0
        base += MAX_STEP + 1
        out[base] = math.log1p(_as_int(prompt_tokens)) / 10.0
        out[base + 1] = 1.0 if has_text else 0.0
        return out

    def to_json(self) -> dict[str, list[str]]:
        return {"agents": list(self.agents), "tools": list(self.tools)}

    @classmethod
    def from_json(cls, data: dict[str, Sequence[str]]) -> FeatureSpec:
        return cls(agents=tuple(data["agents"]), tools=tuple(data["tools"]))


def _index(vocab: tuple[str, ...], value: object) -> int:
    if isinstance(value, str) and value in vocab:
        return vocab.index(value)
    return len(vocab) - 1  # UNKNOWN is always last


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return min(int(value), 10_000_000)
