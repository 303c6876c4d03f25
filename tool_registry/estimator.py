"""Turning a tool's aggregates and duration hint into a :class:`DurationEstimate`.

The blend, for ``n`` observed calls with level ``m`` and a hint ``h``::

    w        = n / (n + K)              K = PRIOR_WEIGHT (5) with a hint, 0 without
    mean     = w * m + (1 - w) * h      and likewise p50 / p90 / p99 against h
    confidence = n / (n + CONFIDENCE_HALF)   (0 with no observations, 0.5 at 10 calls, -> 1)

The level ``m`` is the long-run mean, unless the recent exponentially weighted mean has drifted
from it by more than ``DRIFT_Z`` standard errors of an EWMA (and there are at least
``MIN_DRIFT_CALLS`` calls): then ``m`` is the EWMA and the histogram percentiles are scaled by
``ewma / mean``.  Without observations the estimate is the hint, or, for a tool without a hint
(or one never seen), ``DEFAULT_TOOL_DURATION`` with count 0 and confidence 0.
"""

from __future__ import annotations

import math

from lamps_agent.predictors.base import DEFAULT_TOOL_DURATION, DurationEstimate
from tool_registry.aggregate import EWMA_ALPHA, Aggregate
from tool_registry.histogram import quantiles

PRIOR_WEIGHT = 5.0
CONFIDENCE_HALF = 10.0
DRIFT_Z = 3.0
MIN_DRIFT_CALLS = 20
_EWMA_SE = math.sqrt(EWMA_ALPHA / (2.0 - EWMA_ALPHA))


def prior_estimate(hint: float | None) -> DurationEstimate:
    """The estimate before any call was observed."""
    value = DEFAULT_TOOL_DURATION if hint is None else hint
    return DurationEstimate(mean=value, p50=value, p90=value, p99=value, count=0, confidence=0.0)


def has_drifted(agg: Aggregate) -> bool:
    """Whether the recent EWMA has moved significantly away from the long-run mean."""
    if agg.count < MIN_DRIFT_CALLS:
        return False
    threshold = DRIFT_Z * math.sqrt(agg.variance) * _EWMA_SE
    return abs(agg.ewma - agg.mean) > threshold + 1e-12 * max(agg.mean, 1.0)


def estimate_from(agg: Aggregate | None, hint: float | None) -> DurationEstimate:
    """Blend ``hint`` (a prior worth ``PRIOR_WEIGHT`` calls) with the observed aggregates."""
    if agg is None or agg.count == 0:
        return prior_estimate(hint)
    n = agg.count
    level = agg.mean
    p50, p90, p99 = quantiles(agg.buckets, (0.5, 0.9, 0.99), lo=agg.min, hi=agg.max)
    if has_drifted(agg) and agg.mean > 0:
        scale = agg.ewma / agg.mean
        level = agg.ewma
        p50, p90, p99 = p50 * scale, p90 * scale, p99 * scale
    if hint is None:
        weight, prior = 1.0, 0.0
    else:
        weight, prior = n / (n + PRIOR_WEIGHT), hint
    return DurationEstimate(
        mean=weight * level + (1 - weight) * prior,
        p50=weight * p50 + (1 - weight) * prior,
        p90=weight * p90 + (1 - weight) * prior,
        p99=weight * p99 + (1 - weight) * prior,
        count=n,
        confidence=n / (n + CONFIDENCE_HALF),
    )
