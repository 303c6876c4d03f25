"""Predictors: how policies learn a turn's output length and its tool's duration."""

from __future__ import annotations

import math
from collections.abc import Callable

from lamps_agent.predictors.base import (
    DurationEstimate,
    DurationSource,
    Outcome,
    Prediction,
    PredictionQuery,
    Predictor,
    StaticHints,
)
from lamps_agent.predictors.history import HistoryPredictor
from lamps_agent.predictors.noisy import NoisyPredictor
from lamps_agent.predictors.oracle import HintedOraclePredictor, OraclePredictor
from lamps_agent.registry import Registry

PredictorFactory = Callable[..., Predictor]
PREDICTORS: Registry[PredictorFactory] = Registry("predictor")


@PREDICTORS.register("oracle")
def _oracle(**_: object) -> Predictor:
    """The trace's own values: the upper bound any predictor can reach."""
    return OraclePredictor()


@PREDICTORS.register("oracle-hints")
def _oracle_hints(**_: object) -> Predictor:
    """The trace's values as exact hints carry them to a served engine (no returned tokens)."""
    return HintedOraclePredictor()


@PREDICTORS.register("noisy")
def _noisy(*, error: float = 0.2, seed: int = 0, **_: object) -> Predictor:
    """``noisy:PCT``: the oracle's values with multiplicative Gaussian error of PCT % (LAMPS'
    robustness study)."""
    return NoisyPredictor(error=float(error), seed=int(seed))


@PREDICTORS.register("history")
def _history(*, hints: DurationSource | None = None, **_: object) -> Predictor:
    """Running means of what has completed so far (output per agent, turn and tool; duration per
    tool), with duration hints (the tool registry) and defaults behind."""
    return HistoryPredictor(hints=hints)


@PREDICTORS.register("learned")
def _learned(*, hints: DurationSource | None = None, **_: object) -> Predictor:
    """The learned output-length predictor (LAMPS' own; the optional ``learned`` extra), else
    the history predictor with a logged notice."""
    # Imported on use: its package is optional.
    from lamps_agent.predictors.learned import make_learned_predictor

    return make_learned_predictor(hints=hints)


def make_predictor(spec: str, *, seed: int = 0, hints: DurationSource | None = None) -> Predictor:
    """Build a predictor from ``name`` or ``name:arg`` (``noisy:0.4`` = 40 % error)."""
    name, _, arg = spec.partition(":")
    factory = PREDICTORS.get(name)
    if name == "noisy":
        return factory(error=_noisy_error(spec, arg), seed=seed)
    if arg:
        raise ValueError(f"predictor {name!r} takes no argument (got {spec!r})")
    return factory(seed=seed, hints=hints)


def _noisy_error(spec: str, arg: str) -> float:
    """``noisy:PCT``'s error as a fraction; 20 % without an argument."""
    if not arg:
        return 0.2
    try:
        percent = float(arg)
    except ValueError:
        percent = math.nan
    if not 0 <= percent <= 500:  # NaN fails too
        raise ValueError(
            f"predictor {spec!r}: PCT must be a percentage error in [0, 500] (noisy:40 = 40 %), "
            f"got {arg!r}"
        )
    return percent / 100


__all__ = [
    "PREDICTORS",
    "DurationEstimate",
    "DurationSource",
    "HintedOraclePredictor",
    "HistoryPredictor",
    "NoisyPredictor",
    "OraclePredictor",
    "Outcome",
    "Prediction",
    "PredictionQuery",
    "Predictor",
    "StaticHints",
    "make_predictor",
]
