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
is noise.  That comparison assumes old arrivals are not served after new ones: a policy that
serves the smallest program first (ThunderAgent's resume order) can starve the window's first
arrivals until the drain, so their engine time exceeds the last third's however fast the queue
grows.  A second test does not depend on the order of service: the **backlog**.  Programs in the
system (every arrival, warm-up included, not yet finished) at the window's end exceed those at its
start by the arrivals the engine did not keep up with, plus the count's own rise while it fills
(a trace with a long tail of program durations is still filling after the warm-up).  The latter
is what the same arrivals would show with each program taking its contention-free E2E; the point
is unstable when the excess over it is more than ``max(5 % of the window's arrivals, 3 ×
sqrt(2 × the backlog at the window's start))`` (the second term is the noise of a stationary
count).

**The standard error of a third's mean.**  Programs in the engine at the same time share its
congestion, so their engine times are correlated, and a long-context trace's heavy programs make
congestion episodes that last minutes.  The error computed as if the programs were independent
then understates the noise: over an 8,000 s window a stable run shows a late episode as growth
(``longctx:coding`` on ``h200-llama3-8b`` at 0.14 programs/s: 63 → 87 s, "unstable", every
policy alike).  Where the third is long enough, the error is therefore also estimated by **batch
means** (each third cut by arrival time into batches at least the correlation time long, the
error of the third's mean the spread of its batch means over √batches), and the larger of the
two is used.  The correlation time is taken as the size-biased mean of the programs'
contention-free E2E (``Σ e² / Σ e``: the time the average unit of work spends in the system
alone; under load it is longer, so the batches are, if anything, too short).  With fewer than
``BATCH_MIN`` such batches in a third (the default windows of multi-API, single-API,
``longctx:coding`` and the ``longctx`` mix) the error stays the independent one, as before.  An unstable point has no steady-state mean:
its averages depend on the window's length, so the reports print no reductions for it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lamps_agent.metrics import RequestMetrics

WINDOW_FACTOR = 20.0
"""The measured window lasts at least this many unloaded mean E2E latencies (by default)."""
WARMUP_FACTOR = 2.0
"""The default warm-up: this many unloaded mean E2E latencies."""
GROWTH_SE = 3.0
GROWTH_FRACTION = 0.25
MIN_PER_THIRD = 10  # fewer measured programs in a third: too few to judge
VERDICTS: dict[bool | None, str] = {True: "stable", False: "unstable", None: "not judged"}
BACKLOG_FRACTION = 0.05  # of the window's arrivals the engine may fall behind by
BATCH_MIN = 3  # batches per third, at least: fewer estimate no spread worth using
BATCH_MAX = 10  # batches per third, at most


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

    # None: too few programs arrived in a third of the window to judge.  At such a rate fewer
    # than ~1.5 programs are in flight on average (MIN_PER_THIRD per third of a window 20×
    # the unloaded E2E), so a capacity search takes it as below capacity (``sustained``).
    stable: bool | None
    first_engine_mean: float  # s, programs arriving in the measured window's first third
    last_engine_mean: float  # s, ... its last third
    threshold: float  # s, the growth the rule tolerates
    reason: str = ""
    backlog_growth: int = 0  # programs in the system at the window's end minus at its start
    backlog_threshold: float = math.inf  # the growth the backlog test tolerates
    batches: int = 0  # per third, for the error of its mean (0: the programs as independent)

    @property
    def growth(self) -> float:
        return self.last_engine_mean - self.first_engine_mean

    @property
    def sustained(self) -> bool:
        """Not shown unstable: stable, or too lightly loaded to judge."""
        return self.stable is not False

    @property
    def verdict(self) -> str:
        return VERDICTS[self.stable]


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    var = statistics.variance(values, mean) if len(values) > 1 else 0.0
    return mean, var


def correlation_time(
    requests: Iterable[RequestMetrics], alone_e2e: Mapping[str, float] | None
) -> float:
    """The size-biased mean contention-free E2E of ``requests`` (0 when none is known)."""
    if not alone_e2e:
        return 0.0
    e2e = [alone_e2e[m.program_id] for m in requests if m.program_id in alone_e2e]
    total = sum(e2e)
    return sum(e * e for e in e2e) / total if total > 0 else 0.0


def _batch_count(length: float, tau: float) -> int:
    """Batches per third of ``length`` seconds, each at least ``tau`` long (0: too few)."""
    if tau <= 0:
        return 0
    count = min(BATCH_MAX, int(length // tau))
    return count if count >= BATCH_MIN else 0


def _mean_error(
    samples: Sequence[tuple[float, float]], start: float, length: float, batches: int
) -> tuple[float, float]:
    """(mean, standard error of the mean) of ``(arrival, engine time)`` samples of a third that
    starts at ``start``: the larger of the independent and the batch-means error."""
    values = [v for _, v in samples]
    mean, var = _mean_var(values)
    error = math.sqrt(var / len(values))
    if batches:
        cut: list[list[float]] = [[] for _ in range(batches)]
        for arrival, value in samples:
            cut[min(batches - 1, int((arrival - start) / length * batches))].append(value)
        means = [statistics.fmean(b) for b in cut if b]
        if len(means) >= BATCH_MIN:
            error = max(error, statistics.stdev(means) / math.sqrt(len(means)))
    return mean, error


def in_system(requests: Iterable[RequestMetrics], t: float) -> int:
    """Programs that arrived by ``t`` and had not finished by then."""
    return sum(1 for m in requests if m.arrival <= t < m.finish)


def _alone_in_system(
    run: Sequence[RequestMetrics], alone_e2e: Mapping[str, float], t: float
) -> int:
    return sum(1 for m in run if m.arrival <= t < m.arrival + alone_e2e.get(m.program_id, 0.0))


def _backlog(
    run: Sequence[RequestMetrics], window: Window, alone_e2e: Mapping[str, float]
) -> tuple[int, float]:
    """(growth beyond the contention-free one, tolerated growth) of the programs in the system
    across the window."""
    start = in_system(run, window.warmup)
    growth = in_system(run, window.end) - start
    filling = _alone_in_system(run, alone_e2e, window.end) - _alone_in_system(
        run, alone_e2e, window.warmup
    )
    arrived = sum(1 for m in run if window.is_measured(m.arrival))
    tolerated = max(BACKLOG_FRACTION * arrived, GROWTH_SE * math.sqrt(2 * max(start, 1)))
    return growth - max(filling, 0), tolerated


def judge_stability(
    requests: Sequence[RequestMetrics],
    window: Window,
    *,
    unloaded_engine: float = 0.0,
    run: Sequence[RequestMetrics] | None = None,
    alone_e2e: Mapping[str, float] | None = None,
) -> Stability:
    """The module's stability rule on the measured ``requests`` of one run (see the docstring
    at the top).  ``unloaded_engine``: the mean engine time of the programs alone, the floor of
    the relative tolerance; ``run``: every program of the run (warm-up included), for the
    backlog test (without it only the engine-time test is made); ``alone_e2e``: each program's
    contention-free E2E by program id, for the backlog's filling (none: no filling allowed) and
    the correlation time of the batch-means error (none: the programs taken as independent)."""
    third = window.measured_length / 3
    first = [
        (m.arrival, m.e2e - m.tool_time) for m in requests if m.arrival < window.warmup + third
    ]
    last = [(m.arrival, m.e2e - m.tool_time) for m in requests if m.arrival >= window.end - third]
    if len(first) < MIN_PER_THIRD or len(last) < MIN_PER_THIRD:
        return Stability(
            stable=None,
            first_engine_mean=math.nan,
            last_engine_mean=math.nan,
            threshold=math.nan,
            reason=f"too few programs per third ({len(first)}, {len(last)}) to judge",
        )
    batches = _batch_count(third, correlation_time(requests, alone_e2e))
    m1, e1 = _mean_error(first, window.warmup, third, batches)
    m3, e3 = _mean_error(last, window.end - third, third, batches)
    se = math.sqrt(e1 * e1 + e3 * e3)
    threshold = max(GROWTH_SE * se, GROWTH_FRACTION * max(m1, unloaded_engine))
    growth, tolerated = _backlog(run, window, alone_e2e or {}) if run is not None else (0, math.inf)
    reasons = []
    if m3 - m1 > threshold:
        reasons.append(f"engine time grew {m1:.2f} → {m3:.2f} s across the window")
    if growth > tolerated:
        reasons.append(
            f"the backlog grew by {growth} programs across the window (beyond its filling)"
        )
    return Stability(
        stable=not reasons,
        first_engine_mean=m1,
        last_engine_mean=m3,
        threshold=threshold,
        reason="; ".join(reasons),
        backlog_growth=growth,
        backlog_threshold=tolerated,
        batches=batches,
    )
