"""A fixed log-spaced duration histogram: percentiles from bucket counts, never from raw calls.

Bucket 0 holds durations below ``LOW`` (10 µs, including 0); buckets ``1..NUM_BUCKETS-2`` split
``[LOW, HIGH)`` into ``PER_DECADE`` buckets per decade (each ~12% wide); the last bucket holds
``HIGH`` (100,000 s) and above.  The bounds are part of the stored schema: changing them needs a
migration that rebuilds the histograms.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping

LOW = 1e-5
HIGH = 1e5
PER_DECADE = 20
_LOG_LOW = math.log10(LOW)
NUM_INNER = round((math.log10(HIGH) - _LOG_LOW) * PER_DECADE)
NUM_BUCKETS = NUM_INNER + 2
# Lower bounds of buckets 1..NUM_BUCKETS-1; these exact floats define the buckets.
LOWER_BOUNDS = (*(10 ** (_LOG_LOW + i / PER_DECADE) for i in range(NUM_INNER)), HIGH)


def bucket_of(duration: float) -> int:
    """The bucket index of a duration in seconds (a C-level binary search: it runs per call)."""
    return bisect_right(LOWER_BOUNDS, duration)


def bucket_bounds(index: int) -> tuple[float, float]:
    """The ``[lower, upper)`` bounds of a bucket (the last one is capped at 10 × HIGH)."""
    if index <= 0:
        return 0.0, LOW
    if index >= NUM_BUCKETS - 1:
        return HIGH, HIGH * 10
    return LOWER_BOUNDS[index - 1], LOWER_BOUNDS[index]


def quantiles(
    counts: Mapping[int, int], qs: tuple[float, ...], *, lo: float, hi: float
) -> tuple[float, ...]:
    """Quantiles ``qs`` (ascending, in ``[0, 1]``) of the histogram ``counts`` (bucket -> count).

    Within a bucket the value is interpolated log-linearly (linearly in bucket 0) and the result is
    clamped to the observed ``[lo, hi]``, so a tool that always takes the same time gets exact
    percentiles.
    """
    total = sum(counts.values())
    if total <= 0:
        return tuple(0.0 for _ in qs)
    results: list[float] = []
    items = sorted(counts.items())
    position = 0
    cumulative = 0
    for q in qs:
        target = q * total
        while position < len(items) - 1 and cumulative + items[position][1] < target:
            cumulative += items[position][1]
            position += 1
        index, count = items[position]
        fraction = min(max((target - cumulative) / count, 0.0), 1.0) if count else 0.0
        lower, upper = bucket_bounds(index)
        if index == 0:
            value = lower + fraction * (upper - lower)
        else:
            value = lower * (upper / lower) ** fraction
        results.append(min(max(value, lo), hi))
    return tuple(results)
