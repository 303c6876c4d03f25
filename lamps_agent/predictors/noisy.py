"""Oracle values with multiplicative Gaussian error, as in LAMPS' robustness study."""

from __future__ import annotations

import random

from lamps_agent.predictors.base import Prediction, PredictionQuery, Predictor
from lamps_agent.predictors.oracle import truth_of


class NoisyPredictor(Predictor):
    """Each true value v becomes ``max(v * (1 + e), 0)`` with ``e ~ N(0, error)``.

    ``error`` is a fraction (0.2 = 20 %).  Output length and tool duration get independent draws;
    the generator is private and seeded, so a run is reproducible.
    """

    name = "noisy"

    def __init__(self, *, error: float, seed: int = 0) -> None:
        if not 0 <= error <= 5:
            raise ValueError(f"error must be a fraction in [0, 5], got {error}")
        self.error = error
        self._rng = random.Random(seed)

    def _perturb(self, value: float) -> float:
        if self.error == 0:
            return value
        return max(value * (1.0 + self._rng.gauss(0.0, self.error)), 0.0)

    def predict(self, query: PredictionQuery) -> Prediction:
        true = truth_of(query)
        return Prediction(
            output_tokens=max(self._perturb(true.output_tokens), 1.0),
            tool=true.tool,
            tool_duration=self._perturb(true.tool_duration),
            returned_tokens=true.returned_tokens,
        )
