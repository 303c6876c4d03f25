"""How long a paused turn's KV stays pinned: tool durations and Continuum's cost-benefit rule.

:class:`ToolDurations` keeps the recent durations of each tool; :func:`ttl_by_cost_benefit`
picks the time to live that minimises the memory held plus the waste of the fallback if the tool
outlasts the pin; :class:`PinLosses` measures how often a pin is given up under memory pressure
before it is used (the risk the rule weighs in); :class:`PinDeadlines` remembers, per pin, when
that time runs out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence

from lamps_agent.scheduler.paused import PausedKV


class ToolDurations:
    """The recent durations of each tool (empirical distribution); before ``min_samples`` have
    been seen, a log-normal prior around the predicted duration (``prior_sigma``)."""

    PRIOR_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)

    def __init__(self, *, window: int = 256, min_samples: int = 8, prior_sigma: float = 1.0):
        self.window = window
        self.min_samples = min_samples
        self.prior_sigma = prior_sigma
        self._samples: dict[str, deque[float]] = {}

    def observe(self, tool: str, duration: float) -> None:
        if math.isfinite(duration) and duration >= 0:
            self._samples.setdefault(tool, deque(maxlen=self.window)).append(duration)

    def samples(self, tool: str | None, predicted: float) -> list[float]:
        """Sorted duration samples for ``tool``: observed, or the prior's quantiles."""
        seen = self._samples.get(tool) if tool is not None else None
        if seen is not None and len(seen) >= self.min_samples:
            return sorted(seen)
        median = max(predicted, 1e-3) * math.exp(-(self.prior_sigma**2) / 2)
        z = {0.5: 0.0, 0.75: 0.674, 0.9: 1.282, 0.95: 1.645, 0.99: 2.326}
        return sorted(median * math.exp(self.prior_sigma * z[q]) for q in self.PRIOR_QUANTILES)


def ttl_by_cost_benefit(
    durations: list[float], *, context_tokens: float, fallback_waste: float
) -> tuple[float, float]:
    """Continuum's cost-benefit time to live over a tool's (sorted) duration samples.

    Pinning for ``τ`` costs ``C · E[min(T, τ)]`` token·s of held memory, and if the tool outlasts
    the pin, the swap or discard it only postponed: ``(1 − F(τ)) · W_fallback``.  Candidates are
    the samples themselves (the empirical distribution's jump points); ``τ = 0`` (no pin) costs
    ``W_fallback``.  Returns ``(τ*, cost)``.
    """
    n = len(durations)
    if n == 0:
        return 0.0, fallback_waste
    best_tau, best_cost = 0.0, fallback_waste
    prefix = 0.0
    for i, tau in enumerate(durations):
        prefix += tau  # Σ of the i+1 samples ≤ τ
        returned = (i + 1) / n
        held = (prefix + tau * (n - i - 1)) / n  # E[min(T, τ)]
        cost = context_tokens * held + (1.0 - returned) * fallback_waste
        if cost < best_cost:
            best_tau, best_cost = tau, cost
    return best_tau, best_cost


class PinLosses:
    """The share of recent pins given up under memory pressure (a pin leaves the GPU by a
    discard on an engine that cannot copy pinned KV out: its context is computed again).

    Counts decay by ``1 / memory`` per pin given, so the share follows the last ``memory`` pins
    or so: it rises as pressure builds and falls back once pins survive again.
    """

    def __init__(self, *, memory: int = 64) -> None:
        if memory < 1:
            raise ValueError("memory must be >= 1 pins")
        self._keep = 1.0 - 1.0 / memory
        self._given = 0.0
        self._lost = 0.0

    def given(self) -> None:
        self._given = self._given * self._keep + 1.0
        self._lost *= self._keep

    def lost(self) -> None:
        self._lost += 1.0

    @property
    def share(self) -> float:
        return min(1.0, self._lost / self._given) if self._given > 0 else 0.0


def risk_weighted_pin_cost(cost: float, *, loss_share: float, discard_waste: float) -> float:
    """A pin's expected cost when a ``loss_share`` of pins is given up under pressure before
    use: such a pin ends as a discard (``discard_waste``) whatever its time to live saved."""
    return (1.0 - loss_share) * cost + loss_share * discard_waste


class PinDeadlines:
    """The pins the policy gave a time to live: the TTL the scheduler asks for once
    (:meth:`take_ttl`), and the deadline at which the policy revisits the pin (:meth:`due`)."""

    def __init__(self) -> None:
        self._ttl: dict[Hashable, float] = {}
        self._deadlines: dict[Hashable, float] = {}  # paused key -> when its TTL runs out

    def __len__(self) -> int:
        return len(self._deadlines)

    def set(self, key: Hashable, *, now: float, ttl: float) -> None:
        self._ttl[key] = ttl
        self._deadlines[key] = now + ttl

    def take_ttl(self, key: Hashable) -> float | None:
        """The TTL given to ``key``'s pin, once (None: the policy gave none)."""
        return self._ttl.pop(key, None)

    def due(self, preserved: Sequence[PausedKV], now: float) -> list[PausedKV]:
        """The pins among ``preserved`` whose deadline has come, forgotten here.  Entries of pins
        that left otherwise are dropped once they outnumber the live ones."""
        deadlines = self._deadlines
        out: list[PausedKV] = []
        for paused in preserved:
            deadline = deadlines.get(paused.key)
            if deadline is None or now < deadline:
                continue
            del deadlines[paused.key]
            out.append(paused)
        if len(deadlines) > 4 * len(preserved) + 64:
            live = {p.key for p in preserved}
            self._deadlines = {k: v for k, v in deadlines.items() if k in live}
        return out
