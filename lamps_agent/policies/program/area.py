"""The ``program`` policy's rank: a program's remaining memory-time area, as a bounded handicap.

The area is LAMPS' (prefill, decode, and the tool phase by the turn's planned strategy) summed
over the predicted remaining turns, the context growing by the footprint's ``growth`` per turn.
:class:`Aging` turns it into a handicap of at most ``max_age`` seconds, ``max_age · A / (A +
Ā)`` with ``Ā`` the reference area (a median per tenant, then across tenants), so a waiting request is never passed by one that entered
its class more than ``max_age`` later.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from lamps_agent.area import Timing, area_decode, area_prefill, tool_phase
from lamps_agent.policies.base import predicted_turn
from lamps_agent.policies.program.footprint import Footprint
from lamps_agent.request import KVStrategy, Request

MAX_TURNS = 64  # the sum's horizon in turns


def remaining_area(req: Request, fp: Footprint, timing: Timing) -> float:
    """LAMPS' memory-time area summed over the predicted remaining turns of the program."""
    pred = predicted_turn(req)
    strategy = req.strategy or KVStrategy.DISCARD
    context = float(req.segment.prompt_tokens)
    resident = float(req.kv_tokens)
    turns = max(1, min(math.ceil(fp.remaining_turns), MAX_TURNS))
    area = 0.0
    for j in range(turns):
        new = max(context - resident, 0.0)
        area += area_prefill(resident, new, timing.prefill_seconds(new))
        area += area_decode(context, pred.output_tokens, timing.tau)
        paused = context + pred.output_tokens
        if j < turns - 1 and pred.has_tool_call:
            held, resident = tool_phase(paused, strategy, pred.tool_duration, timing)
            area += held
        context += max(fp.growth, pred.output_tokens)
    return area


class Aging:
    """The reference area and the handicap it sets.

    The reference is robust to what any one client claims: the median of each tenant's last
    ``window`` areas, then the median across tenants (every program in no tenant counts as one
    tenant).  A running mean let a minority of programs claiming 100k-token outputs double it and
    so shrink every honest program's handicap (issue 23); a median moves only if more than half
    of a tenant's turns, or more than half of the tenants, move it.
    """

    REFRESH = 16  # a tenant's median is recomputed every this many areas once it has a window

    def __init__(self, *, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._areas: dict[str | None, deque[float]] = {}
        self._medians: dict[str | None, float] = {}
        self._since: dict[str | None, int] = {}
        self.num_areas = 0

    @property
    def reference(self) -> float:
        """The median across tenants of each tenant's median area (0 before any area)."""
        return statistics.median(self._medians.values()) if self._medians else 0.0

    def count(self, area: float, tenant: str | None = None) -> None:
        areas = self._areas.get(tenant)
        if areas is None:
            areas = self._areas[tenant] = deque(maxlen=self._window)
        areas.append(area)
        self.num_areas += 1
        since = self._since.get(tenant, self.REFRESH) + 1
        if since >= self.REFRESH or len(areas) < 4 * self.REFRESH:
            self._medians[tenant] = statistics.median(areas)
            since = 0
        self._since[tenant] = since

    def handicap(self, area: float, max_age: float, tenant: str | None = None) -> float:
        """Seconds added to the time a request entered the queue: in ``[0, max_age)``, larger
        for larger areas.  Every call also counts ``area`` in ``tenant``'s reference."""
        self.count(area, tenant)
        ref = max(self.reference, 1e-9)
        return max_age * area / (area + ref)
