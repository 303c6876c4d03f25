"""The program policy's rank: remaining memory-time area, and the aging that bounds it."""

from __future__ import annotations

import pytest

from lamps_agent.area import Timing
from lamps_agent.policies.program import NEW, Aging, Footprint, remaining_area
from lamps_agent.policies.program.keys import program_queue_key
from lamps_agent.predictors.base import Prediction
from lamps_agent.request import KVStrategy, Request
from tests.core.program.helpers import sim_request

TIMING = Timing(tau=0.01, prefill_seconds=lambda t: t * 1e-4, transfer_seconds=lambda t: t * 1e-5)


def _predicted(strategy: KVStrategy | None, *, prompt: int = 1000) -> Request:
    req = sim_request(1, prompt=prompt)
    req.prediction = Prediction(output_tokens=50, tool="t", tool_duration=2.0, returned_tokens=0)
    req.strategy = strategy
    return req


def test_one_remaining_turn_is_the_turns_prefill_and_decode() -> None:
    req = _predicted(None)
    area = remaining_area(req, Footprint(peak=1050, remaining_turns=1, growth=50), TIMING)
    prefill = (1000 * 1e-4) * (0 + 1000 / 2)
    decode = 0.01 * (1000 * 50 + 50 * 49 / 2)
    assert area == pytest.approx(prefill + decode)


def test_the_area_grows_with_the_turns_left_and_with_a_pinned_tool() -> None:
    def area(turns: float, strategy: KVStrategy | None) -> float:
        fp = Footprint(peak=0.0, remaining_turns=turns, growth=500)
        return remaining_area(_predicted(strategy), fp, TIMING)

    assert area(1, None) < area(2, None) < area(4, None)
    # Pinned through the tool: the context's memory for the tool's 2 s, and no recompute.
    assert area(2, KVStrategy.PRESERVE) > area(2, KVStrategy.DISCARD)
    assert area(1e6, None) == area(64, None)  # the horizon


def test_aging_bounds_how_late_an_entrant_can_pass() -> None:
    aging = Aging()
    for area in (1e6, 2e6, 3e6):  # the running mean area the handicaps are relative to
        aging.handicap(area, 60.0)
    huge = program_queue_key(sim_request(1), cls=NEW, entered=0.0 + aging.handicap(1e9, 60.0))
    tiny = program_queue_key(sim_request(2), cls=NEW, entered=10.0 + aging.handicap(1.0, 60.0))
    assert tiny < huge  # a far smaller program 10 s later goes first
    later = program_queue_key(sim_request(3), cls=NEW, entered=60.0 + aging.handicap(0.0, 60.0))
    assert huge < later  # max_age later: never ahead, however small its area
    for area in (0.0, 1.0, 1e3, 1e6, 1e12):
        assert 0.0 <= aging.handicap(area, 60.0) < 60.0
        assert aging.handicap(area, 20.0) < 20.0


def test_the_reference_is_the_median_area() -> None:
    aging = Aging()
    assert aging.handicap(100.0, 10.0) == pytest.approx(5.0)  # A = Ā: half the bound
    aging.handicap(300.0, 10.0)
    assert aging.reference == pytest.approx(200.0)
    assert aging.num_areas == 2


def test_a_hog_cannot_move_the_reference() -> None:
    """Issue 23: 10 % of turns claiming 100k-token outputs (areas 1e6 times larger) within a
    tenant, or a whole tenant of them among four, leave the reference where the honest put it."""
    honest = [100.0 + i % 50 for i in range(2000)]
    alone, mixed, tenants = Aging(), Aging(), Aging()
    for i, area in enumerate(honest):
        alone.count(area)
        mixed.count(1e8 if i % 10 == 0 else area)
        tenants.count(area, f"t{i % 3}")
        if i % 3 == 0:
            tenants.count(1e8, "hog")
    assert mixed.reference == pytest.approx(alone.reference, rel=0.1)
    assert tenants.reference == pytest.approx(alone.reference, rel=0.1)
    assert 120 < alone.reference < 130
