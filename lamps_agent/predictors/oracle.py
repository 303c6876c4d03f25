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


class HintedOraclePredictor(Predictor):
    """The oracle as a served engine hears it: what the hint envelope (:class:`LampsHints`)
    carries — the turn's output, its tool and the tool's duration, exactly — and nothing it does
    not (the tool's returned tokens: the engine learns them when the next turn arrives).  The
    simulator's twin of the vLLM plug-in fed by exact hints (``validate``, the replay)."""

    name = "oracle-hints"

    def predict(self, query: PredictionQuery) -> Prediction:
        truth = truth_of(query)
        return Prediction(
            output_tokens=truth.output_tokens,
            tool=truth.tool,
            tool_duration=truth.tool_duration,
            returned_tokens=0.0,
        )
