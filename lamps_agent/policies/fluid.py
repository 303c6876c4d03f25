"""Online estimates behind WAIT and Nested WAIT: arrival rates, running means, the resident budget N.

Rates are exponentially decayed counts: each arrival adds 1, the count decays with time constant
``window`` seconds, and ``rate = count / window`` — an arrival rate over the recent past that
follows drift.  The resident budget ``N`` is the fluid model's: the number of requests that fill
the KV capacity when each holds ``prompt + output/2`` tokens on average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class DecayedRate:
    window: float
    count: float = 0.0
    last: float = 0.0

    def add(self, now: float) -> None:
        self.count = self.value_count(now) + 1.0
        self.last = now

    def value_count(self, now: float) -> float:
        if self.count == 0.0:
            return 0.0
        return self.count * math.exp(-max(now - self.last, 0.0) / self.window)

    def rate(self, now: float) -> float:
        return self.value_count(now) / self.window


@dataclass(slots=True)
class Mean:
    count: int = 0
    value: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        self.value += (x - self.value) / self.count


def resident_budget(capacity_tokens: float, mean_footprint: float) -> float:
    """Fluid-model N: how many requests of average footprint ``prompt + output/2`` fit."""
    return capacity_tokens / max(mean_footprint, 1.0)
