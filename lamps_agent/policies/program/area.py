"""The ``program`` policy's rank: a program's remaining memory-time area, as a bounded handicap.

The area is LAMPS' (prefill, decode, and the tool phase by the turn's planned strategy) summed
over the predicted remaining turns, the context growing by the footprint's ``growth`` per turn.
:class:`Aging` turns it into a handicap of at most ``max_age`` seconds, ``max_age · A / (A +
Ā)`` with ``Ā`` the running mean area, so a waiting request is never passed by one that entered
its class more than ``max_age`` later.
"""

from __future__ import annotations

import math

from lamps_agent.area import Timing, area_decode, area_prefill
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
            if strategy is KVStrategy.PRESERVE:
                area += paused * pred.tool_duration
                resident = paused
            elif strategy is KVStrategy.SWAP:
                area += 2 * paused * timing.transfer_seconds(paused)
                resident = paused
            else:
                resident = 0.0
        context += max(fp.growth, pred.output_tokens)
    return area


class Aging:
    """The running mean area (over the last ~1,000 keys) and the handicap it sets."""

    def __init__(self) -> None:
        self.mean_area = 0.0
        self.num_areas = 0

    def handicap(self, area: float, max_age: float) -> float:
        """Seconds added to the time a request entered the queue: in ``[0, max_age)``, larger
        for larger areas.  Every call also counts ``area`` in the running mean."""
        self.num_areas += 1
        self.mean_area += (area - self.mean_area) / min(self.num_areas, 1000)
        ref = max(self.mean_area, 1e-9)
        return max_age * area / (area + ref)
