"""Incremental per-tool aggregates: merged batch by batch, never recomputed from the calls.

Every field combines associatively, so several processes can add their batches to the same
database row with one atomic ``UPDATE ... SET x = x + :dx`` each, in any order.  The exponentially
weighted mean is kept bias-corrected as a pair (``ewma_num``, ``ewma_den``): adding ``n`` values
``x_1..x_n`` multiplies both by ``(1-α)^n`` and adds ``Σ α(1-α)^(n-i) x_i`` and ``1-(1-α)^n``;
the mean is ``ewma_num / ewma_den``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from tool_registry.histogram import LOWER_BOUNDS, bucket_of
from tool_registry.types import ROW_DURATION, ROW_STARTED_AT, ROW_STATUS, ROW_TOOL, CallRow

EWMA_ALPHA = 0.1  # weight of the newest call; ~10 calls of memory
bucket_index = partial(bisect_right, LOWER_BOUNDS)  # bucket_of without a Python frame per call


@dataclass(slots=True)
class Aggregate:
    """Running statistics of one tool's call durations (seconds)."""

    count: int = 0
    error_count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    min: float = math.inf
    max: float = 0.0
    ewma_num: float = 0.0
    ewma_den: float = 0.0
    last_at: float | None = None
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def variance(self) -> float:
        if self.count < 2:
            return 0.0
        mean = self.mean
        return max(self.total_sq / self.count - mean * mean, 0.0) * self.count / (self.count - 1)

    @property
    def ewma(self) -> float:
        return self.ewma_num / self.ewma_den if self.ewma_den > 0 else self.mean

    @property
    def decay(self) -> float:
        """The factor a later batch multiplies this one's EWMA pair by (``(1-α)^count``)."""
        return (1.0 - EWMA_ALPHA) ** self.count

    def add(self, duration: float, *, error: bool = False, at: float | None = None) -> None:
        self.count += 1
        self.error_count += int(error)
        self.total += duration
        self.total_sq += duration * duration
        self.min = min(self.min, duration)
        self.max = max(self.max, duration)
        self.ewma_num = self.ewma_num * (1.0 - EWMA_ALPHA) + EWMA_ALPHA * duration
        self.ewma_den = self.ewma_den * (1.0 - EWMA_ALPHA) + EWMA_ALPHA
        if at is not None:
            self.last_at = at if self.last_at is None else max(self.last_at, at)
        bucket = bucket_of(duration)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1

    def merge(self, later: Aggregate) -> None:
        """Add ``later`` (calls that came after this aggregate's) in place."""
        decay = later.decay
        self.count += later.count
        self.error_count += later.error_count
        self.total += later.total
        self.total_sq += later.total_sq
        self.min = min(self.min, later.min)
        self.max = max(self.max, later.max)
        self.ewma_num = self.ewma_num * decay + later.ewma_num
        self.ewma_den = self.ewma_den * decay + later.ewma_den
        if later.last_at is not None:
            self.last_at = max(self.last_at or later.last_at, later.last_at)
        for bucket, count in later.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count


def aggregate_batch(rows: Iterable[CallRow]) -> dict[str, Aggregate]:
    """Per-tool aggregates of a batch, in the batch's order (what ``add`` one by one would give,
    computed with builtins per tool: this runs for every record the writer stores)."""
    groups: dict[str, list[CallRow]] = {}
    for row in rows:
        group = groups.get(row[ROW_TOOL])
        if group is None:
            group = groups[row[ROW_TOOL]] = []
        group.append(row)
    keep = 1.0 - EWMA_ALPHA
    result: dict[str, Aggregate] = {}
    for name, group in groups.items():
        durations = [row[ROW_DURATION] for row in group]
        ewma_num = 0.0
        for duration in durations:
            ewma_num = ewma_num * keep + EWMA_ALPHA * duration
        result[name] = Aggregate(
            count=len(durations),
            error_count=sum(1 for row in group if row[ROW_STATUS] == "error"),
            total=sum(durations),
            total_sq=sum(duration * duration for duration in durations),
            min=min(durations),
            max=max(durations),
            ewma_num=ewma_num,
            ewma_den=1.0 - keep ** len(durations),
            last_at=max(row[ROW_STARTED_AT] + row[ROW_DURATION] for row in group),
            buckets=dict(Counter(map(bucket_index, durations))),
        )
    return result
