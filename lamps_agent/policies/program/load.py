"""When the ``program`` policy's rules apply: a time-averaged KV load and an engage switch.

Two signals of KV pressure are averaged exponentially over a window (two program lifetimes as the
engine measures them, :class:`ProgramLifetimes`, unless ``window_s`` is set): the KV in use over its
capacity (``load``: what is held now) and the committed footprint over the budget
(``commitment``: what the programs in flight are predicted to need, which leads the first when
many programs start at once).  The rules engage when ``load`` reaches ``engage_at`` or
``commitment`` reaches ``commit_at``, and release when both fall below ``RELEASE_FRACTION`` of
theirs (hysteresis).  Below both the memory sustains the arrivals (WAIT's fluid argument: a gate
only matters when the fluid load nears capacity), and the policy schedules as ``lamps-aging``.
"""

from __future__ import annotations

import math

from lamps_agent.policies.timescale import ProgramLifetimes

RELEASE_FRACTION = 0.8  # the rules release below 0.8 x engage_at (hysteresis)
WINDOW_LIFETIMES = 2.0  # the derived window: two program lifetimes (ProgramLifetimes)


class EngageSwitch:
    """The time-averaged load and commitment, and whether the program-level rules are on."""

    def __init__(
        self,
        *,
        engage_at: float,
        commit_at: float,
        window_s: float | None,
        lifetimes: ProgramLifetimes | None = None,
    ) -> None:
        """``window_s``: the averaging window; None: derived from the programs' ``lifetimes``
        (:class:`ProgramLifetimes`, the policy's; a fresh one by default)."""
        if not 0 <= engage_at <= 4:
            raise ValueError("engage_at must be in [0, 4] (a fraction of the KV capacity)")
        if window_s is not None and not window_s > 0:
            raise ValueError("load_window_s must be > 0 (or None: derived)")
        if not commit_at >= 0:
            raise ValueError("commit_at must be >= 0 (a multiple of the budget)")
        self.engage_at = engage_at
        self.commit_at = commit_at
        self.window_s = window_s
        self.load = 0.0  # time-averaged KV in use / KV capacity
        self.commitment = 0.0  # time-averaged committed footprint / budget
        self._at: float | None = None
        self.lifetimes = ProgramLifetimes() if lifetimes is None else lifetimes
        self.engaged = engage_at == 0.0  # engage_at=0: always on
        self.engagements = 0  # times the rules engaged

    def window(self) -> float:
        """The averaging window: the option's, else ``WINDOW_LIFETIMES`` program lifetimes
        (:class:`ProgramLifetimes`; NaN while no tool has returned)."""
        if self.window_s is not None:
            return self.window_s
        return WINDOW_LIFETIMES * self.lifetimes.median

    def update(self, *, now: float, used: float, committed: float) -> bool:
        """Average in this look's ``used`` (KV in use / capacity) and ``committed`` (committed
        footprint / budget) at time ``now``; returns whether the rules are engaged."""
        if self.window_s is None and not self.lifetimes.known:
            # No time scale yet (no tool has returned): no average can speak for a load, and
            # the first look with one starts it (before, a new program's prior footprint
            # alone would weigh as a sustained load).
            return self.engaged
        if self._at is None:
            self.load, self.commitment = used, committed
        elif now > self._at:
            weight = 1.0 - math.exp(-(now - self._at) / self.window())
            self.load += weight * (used - self.load)
            self.commitment += weight * (committed - self.commitment)
        self._at = now
        high = self.load >= self.engage_at or self.commitment >= self.commit_at
        low = (
            self.load < RELEASE_FRACTION * self.engage_at
            and self.commitment < RELEASE_FRACTION * self.commit_at
        )
        if not self.engaged and high:
            self.engaged = True
            self.engagements += 1
        elif self.engaged and low:
            self.engaged = False
        return self.engaged
