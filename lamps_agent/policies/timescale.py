"""The workload's time scale as the engine measures it, for the rules that wait in seconds.

A wait expressed in wall-clock seconds means something else on a replay at 1/20 of the time
than in the simulator; a wait expressed in the workload's own time — a turn's cycle (its decode
and its tool), a program's lifetime — means the same at any scale.  ``lamps-aging`` ages by the
turn cycle; ``program`` also averages its load over lifetimes, bounds its waits by them and
forgets the programs that outlive them.
"""

from __future__ import annotations

import math
import statistics
from collections import deque


class ProgramLifetimes:
    """The workload's time scale as the engine measures it: a finished program's lifetime
    without contention — its tools' observed durations plus its turns' decode time at batch 1
    by the cost model — the median of the last 256.  Queueing is left out, so the scale does
    not grow with the load it is meant to average; tool time, which the engine measures, is
    what moves it from a simulated 30-minute window to a replay at 1/20 of the time.  Before a
    program has finished, a turn's cycle (its decode time and its tool's) times the turns a
    program is expected to take stands in; before a tool has returned there is no scale."""

    def __init__(self, *, expected_turns: float = 8.0) -> None:
        if not expected_turns >= 1:
            raise ValueError("expected_turns must be >= 1")
        self.expected_turns = expected_turns
        self._lifetimes: deque[float] = deque(maxlen=256)
        self._cycles: deque[float] = deque(maxlen=256)
        # the medians, read at every enqueue (the aging bounds), computed once per sample
        self._lifetime_median: float | None = None
        self._cycle_median: float | None = None

    def observe(self, seconds: float) -> None:
        """A program finished after ``seconds`` of decode and tools."""
        if math.isfinite(seconds) and seconds > 0:
            self._lifetimes.append(seconds)
            self._lifetime_median = None

    def observe_cycle(self, seconds: float) -> None:
        """A turn's decode and its tool call took ``seconds``."""
        if math.isfinite(seconds) and seconds > 0:
            self._cycles.append(seconds)
            self._cycle_median = None

    @property
    def known(self) -> bool:
        return bool(self._lifetimes or self._cycles)

    @property
    def cycle(self) -> float:
        """A turn's cycle, its decode time and its tool's: the median of the last 256 (NaN:
        none yet)."""
        if not self._cycles:
            return math.nan
        if self._cycle_median is None:
            self._cycle_median = statistics.median(self._cycles)
        return self._cycle_median

    @property
    def median(self) -> float:
        """A program's lifetime: measured, else estimated from its turns' cycles (NaN: none)."""
        if self._lifetimes:
            if self._lifetime_median is None:
                self._lifetime_median = statistics.median(self._lifetimes)
            return self._lifetime_median
        return self.cycle * self.expected_turns  # NaN while no cycle is known either


def measured_or(derived: float, prior: float) -> float:
    """``derived`` where the engine has measured it (finite, > 0), else ``prior``."""
    return derived if math.isfinite(derived) and derived > 0 else prior
