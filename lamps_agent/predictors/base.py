"""The predictor interface: the only way predictions reach a scheduling policy.

A policy asks, at the start of each turn, for a :class:`Prediction` of that turn: how many tokens
the model will generate before its tool call, which tool it will call, how long the tool will take,
and how many tokens it will return.  After the turn (and its tool call) completes, the engine
reports the :class:`Outcome`, so online predictors can learn.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lamps_agent.program import Segment

DEFAULT_OUTPUT_TOKENS = 128.0
DEFAULT_TOOL_DURATION = 5.0
DEFAULT_RETURNED_TOKENS = 32.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionQuery:
    """What is known when a turn starts.  ``truth`` is set only where the caller knows the future
    (simulation, trace replay); real predictors must not read it."""

    agent: str
    step: int
    tool: str | None
    prompt_tokens: int
    prompt_text: str | None = None
    program_id: str | None = None  # the program the turn belongs to (replay: find its text)
    tenant: str | None = None  # the client whose hints these are (None: the only one)
    truth: Segment | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    output_tokens: float
    tool: str | None
    tool_duration: float
    returned_tokens: float

    def __post_init__(self) -> None:
        # one comparison chain per field (NaN and inf fail it); the loop below names the bad one
        if (
            0.0 <= self.output_tokens < math.inf
            and 0.0 <= self.tool_duration < math.inf
            and 0.0 <= self.returned_tokens < math.inf
        ):
            return
        for name in ("output_tokens", "tool_duration", "returned_tokens"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"prediction {name} must be finite and >= 0, got {value}")

    @property
    def has_tool_call(self) -> bool:
        return self.tool is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a finished turn turned out to be."""

    output_tokens: int
    tool: str | None
    tool_duration: float
    returned_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DurationEstimate:
    """A tool-duration estimate with its spread and how much evidence stands behind it."""

    mean: float
    p50: float
    p90: float
    p99: float
    count: int
    confidence: float  # 0 = prior only, -> 1 with many observations


class DurationSource(Protocol):
    """Anything that can estimate a tool's duration (the tool registry implements this)."""

    def estimate(self, tool: str) -> DurationEstimate: ...


class Predictor(ABC):
    """Predicts each turn's output length and tool behaviour."""

    name: str = "predictor"

    @abstractmethod
    def predict(self, query: PredictionQuery) -> Prediction: ...

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:  # noqa: B027
        """Learn from a completed turn; stateless predictors ignore it."""


class StaticHints:
    """A :class:`DurationSource` from a plain mapping of tool -> seconds (e.g. duration hints)."""

    def __init__(
        self, hints: Mapping[str, float], *, default: float = DEFAULT_TOOL_DURATION
    ) -> None:
        for tool, value in hints.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"duration hint for {tool!r} must be finite and >= 0, got {value}")
        self._hints = dict(hints)
        self._default = default

    def estimate(self, tool: str) -> DurationEstimate:
        value = self._hints.get(tool, self._default)
        return DurationEstimate(
            mean=value, p50=value, p90=value, p99=value, count=0, confidence=0.0
        )
