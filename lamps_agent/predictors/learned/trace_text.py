"""Giving a predictor the prompt text of trace turns in simulation.

The simulator's queries carry token counts only (``prompt_text=None``).  :class:`TraceTextPredictor`
looks the text up by ``(program_id, step)`` from the trace's raw JSON and passes the query on with
``prompt_text`` filled in, matching on ``query.program_id``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lamps_agent.predictors.base import Outcome, Prediction, PredictionQuery, Predictor


class TraceTextPredictor(Predictor):
    """Wraps ``inner``; adds the trace's prompt text to each query it can match."""

    def __init__(self, inner: Predictor, texts: Mapping[tuple[str, int], str]) -> None:
        self.inner = inner
        self.texts = texts
        self.name = inner.name

    def _with_text(self, query: PredictionQuery) -> PredictionQuery:
        if query.prompt_text is not None or query.program_id is None:
            return query
        text = self.texts.get((query.program_id, query.step))
        return query if text is None else dataclasses.replace(query, prompt_text=text)

    def predict(self, query: PredictionQuery) -> Prediction:
        return self.inner.predict(self._with_text(query))

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.inner.observe(self._with_text(query), outcome)
