"""Online history: running means of what has completed so far, with hints and defaults behind.

Output length is looked up from the most specific key with enough observations:
(agent, step, tool) → (agent, tool) → (tool) → global → default.  Tool duration and returned
tokens come from the per-tool running mean, falling back to a duration hint source (e.g. the tool
registry or static hints) and then to a global default.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from lamps_agent.predictors.base import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_RETURNED_TOKENS,
    DEFAULT_TOOL_DURATION,
    DurationSource,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
)


@dataclass(slots=True)
class RunningMean:
    count: int = 0
    mean: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.mean += (value - self.mean) / self.count


OutputKey = tuple[str, ...]


class HistoryPredictor(Predictor):
    """Per-key running means learned online; thread-safe (agents run tools in parallel)."""

    name = "history"

    def __init__(
        self,
        *,
        hints: DurationSource | None = None,
        default_output_tokens: float = DEFAULT_OUTPUT_TOKENS,
        default_tool_duration: float = DEFAULT_TOOL_DURATION,
        default_returned_tokens: float = DEFAULT_RETURNED_TOKENS,
        min_count: int = 1,
    ) -> None:
        if min_count < 1:
            raise ValueError("min_count must be >= 1")
        for name, value in (
            ("default_output_tokens", default_output_tokens),
            ("default_tool_duration", default_tool_duration),
            ("default_returned_tokens", default_returned_tokens),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._hints = hints
        self._default_output = default_output_tokens
        self._default_duration = default_tool_duration
        self._default_returned = default_returned_tokens
        self._min_count = min_count
        self._outputs: dict[OutputKey, RunningMean] = {}
        self._durations: dict[str, RunningMean] = {}
        self._returned: dict[str, RunningMean] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _output_keys(query: PredictionQuery) -> tuple[OutputKey, ...]:
        tool = query.tool or "<final>"
        return (
            ("s", query.agent, str(query.step), tool),
            ("a", query.agent, tool),
            ("t", tool),
            ("*",),
        )

    def _lookup(self, table: dict[str, RunningMean], key: str) -> float | None:
        stat = table.get(key)
        return stat.mean if stat is not None and stat.count >= self._min_count else None

    def predict_output_tokens(self, query: PredictionQuery) -> float:
        with self._lock:
            return self._output_tokens(query)

    def _output_tokens(self, query: PredictionQuery) -> float:  # the caller holds the lock
        for key in self._output_keys(query):
            stat = self._outputs.get(key)
            if stat is not None and stat.count >= self._min_count:
                return max(stat.mean, 1.0)
        return self._default_output

    def predict_tool_duration(self, tool: str) -> float:
        with self._lock:
            seen = self._lookup(self._durations, tool)
        return self._duration(tool, seen)

    def _duration(self, tool: str, seen: float | None) -> float:
        if seen is not None:
            return seen
        if self._hints is not None:
            try:
                return self._hints.estimate(tool).mean
            except Exception:  # noqa: BLE001 - a broken hint source must not break scheduling
                return self._default_duration
        return self._default_duration

    def predict(self, query: PredictionQuery) -> Prediction:
        # one lock for the three look-ups: this runs on every model call of a LangChain agent
        tool = query.tool
        with self._lock:
            output = self._output_tokens(query)
            if tool is not None:
                seen = self._lookup(self._durations, tool)
                returned = self._lookup(self._returned, tool)
        if tool is None:
            duration, returned = 0.0, 0.0
        else:
            duration = self._duration(tool, seen)  # the hint source is asked outside the lock
            returned = self._default_returned if returned is None else returned
        return Prediction(
            output_tokens=output, tool=tool, tool_duration=duration, returned_tokens=returned
        )

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        with self._lock:
            for key in self._output_keys(query):
                self._outputs.setdefault(key, RunningMean()).add(float(outcome.output_tokens))
            if outcome.tool is not None:
                self._durations.setdefault(outcome.tool, RunningMean()).add(outcome.tool_duration)
                self._returned.setdefault(outcome.tool, RunningMean()).add(
                    float(outcome.returned_tokens)
                )
