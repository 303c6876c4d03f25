"""The steady-state protocol: which arrivals are measured, and whether a run was stable.

A run's arrivals cover ``[0, end]``; the first ``warmup`` seconds fill the engine and are not
measured; every arrival (warm-up included) runs to completion (the drain), and only programs that
arrived in ``[warmup, end]`` are measured, so the last measured program is not cut short and the
first ones do not see an empty engine.

**Stability rule.**  The measured arrival window is cut into thirds by arrival time.  A point is
*unstable* when the mean engine time (E2E minus the program's own tool time: the part queueing can
grow) of programs arriving in the last third exceeds that of the first third by more than
``max(3 × the standard error of the difference, 25 % of the first third's mean (at least of the
unloaded mean engine time))``.  Under overload the queue, and with it the engine time, grows for as
long as arrivals continue; below capacity both thirds see the same distribution and the difference
is noise.  An unstable point has no steady-state mean: its averages depend on the window's length,
so the reports print no reductions for it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lamps_agent.metrics import RequestMetrics

WINDOW_FACTOR = 20.0
"""The measured window lasts at least this many unloaded mean E2E latencies (by default)."""
WARMUP_FACTOR = 2.0
"""The default warm-up: this many unloaded mean E2E latencies."""
GROWTH_SE = 3.0
GROWTH_FRACTION = 0.25
MIN_PER_THIRD = 10  # fewer measured programs in a third: too few to judge


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """Arrivals in ``[0, end]``; those in ``[warmup, end]`` are measured."""

    warmup: float
    end: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise ValueError(f"warm-up must be >= 0 s, got {self.warmup}")
        if not (math.isfinite(self.end) and self.end > self.warmup):
            raise ValueError(
                f"the window must end after the warm-up ({self.warmup:g} s), got {self.end:g} s"
            )

    @property
    def measured_length(self) -> float:
        return self.end - self.warmup

    def is_measured(self, arrival: float) -> bool:
        return self.warmup <= arrival <= self.end

    def measured(self, requests: Iterable[RequestMetrics]) -> list[RequestMetrics]:
        return [m for m in requests if self.is_measured(m.arrival)]


def _round_up(seconds: float, step: float = 10.0) -> float:
    return step * math.ceil(seconds / step)


def default_window(
    unloaded_e2e: float, *, duration: float | None = None, warmup: float | None = None
) -> Window:
    """The window for a trace whose programs take ``unloaded_e2e`` seconds on average alone.

    ``duration`` is the whole arrival window (warm-up included); by default the warm-up is
    ``WARMUP_FACTOR`` and the measured part ``WINDOW_FACTOR`` unloaded mean E2E latencies (each
    rounded up to 10 s).
    """
    if not (math.isfinite(unloaded_e2e) and unloaded_e2e > 0):
        raise ValueError(f"the unloaded mean E2E must be > 0, got {unloaded_e2e}")
    if warmup is None:
        warmup = _round_up(WARMUP_FACTOR * unloaded_e2e)
        if duration is not None and warmup >= duration:
            warmup = 0.1 * duration  # a short window the user asked for keeps 90 % measured
    if duration is None:
        duration = warmup + _round_up(WINDOW_FACTOR * unloaded_e2e)
    if warmup >= duration:
        raise ValueError(f"--warmup {warmup:g}: must be shorter than --duration {duration:g}")
    return Window(warmup=warmup, end=duration)


@dataclass(frozen=True, slots=True, kw_only=True)
class Stability:
    """The verdict on one run, with the numbers behind it."""

    stable: bool
    first_engine_mean: float  # s, programs arriving in the measured window's first third
    last_engine_mean: float  # s, ... its last third
    threshold: float  # s, the growth the rule tolerates
    reason: str = ""

    @property
    def growth(self) -> float:
        return self.last_engine_mean - self.first_engine_mean


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    var = statistics.variance(values, mean) if len(values) > 1 else 0.0
    return mean, var


def judge_stability(
    requests: Sequence[RequestMetrics], window: Window, *, unloaded_engine: float = 0.0
) -> Stability:
    """The module's stability rule on the measured ``requests`` of one run (see the docstring
    at the top).  ``unloaded_engine``: the mean engine time of the programs alone, the floor of
    the relative tolerance."""
    third = window.measured_length / 3
    first = [m.e2e - m.tool_time for m in requests if m.arrival < window.warmup + third]
    last = [m.e2e - m.tool_time for m in requests if m.arrival >= window.end - third]
    if len(first) < MIN_PER_THIRD or len(last) < MIN_PER_THIRD:
        return Stability(
            stable=False,
            first_engine_mean=math.nan,
            last_engine_mean=math.nan,
            threshold=math.nan,
            reason=f"too few programs per third ({len(first)}, {len(last)}) to judge",
        )
    m1, v1 = _mean_var(first)
    m3, v3 = _mean_var(last)
    se = math.sqrt(v1 / len(first) + v3 / len(last))
    threshold = max(GROWTH_SE * se, GROWTH_FRACTION * max(m1, unloaded_engine))
    stable = m3 - m1 <= threshold
    reason = "" if stable else f"engine time grew {m1:.2f} → {m3:.2f} s across the window"
    return Stability(
        stable=stable,
        first_engine_mean=m1,
        last_engine_mean=m3,
        threshold=threshold,
        reason=reason,
    )
