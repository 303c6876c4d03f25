"""The trace's own values: the upper bound any predictor can reach."""

from __future__ import annotations

from lamps_agent.predictors.base import Prediction, PredictionQuery, Predictor


def truth_of(query: PredictionQuery) -> Prediction:
    seg = query.truth
    if seg is None:
        raise ValueError("the oracle predictor needs the true segment (simulation or replay only)")
    return Prediction(
        output_tokens=float(seg.output_tokens),
        tool=seg.tool,
        tool_duration=seg.tool_duration,
        returned_tokens=float(seg.returned_tokens),
    )


class OraclePredictor(Predictor):
    name = "oracle"

    def predict(self, query: PredictionQuery) -> Prediction:
        return truth_of(query)
