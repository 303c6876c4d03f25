"""The engage switch: time-averaged KV load and commitment, with hysteresis."""

from __future__ import annotations

import math

import pytest

from lamps_agent.policies.program import RELEASE_FRACTION, EngageSwitch


def test_a_sustained_load_engages_the_rules_and_a_spike_does_not() -> None:
    switch = EngageSwitch(engage_at=0.5, commit_at=1.0, window_s=10.0)
    assert not switch.update(now=0.0, used=0.0, committed=0.0)  # the first look sets the average
    assert not switch.update(now=1.0, used=0.6, committed=0.0)  # a spike is not a load
    assert switch.load == pytest.approx(0.6 * (1 - math.exp(-0.1)))
    assert switch.update(now=30.0, used=0.6, committed=0.0)  # three windows at 60 %
    assert switch.engagements == 1
    assert switch.update(now=32.0, used=0.0, committed=0.0)  # hysteresis: above 0.8 x 0.5
    assert switch.load >= RELEASE_FRACTION * 0.5
    assert not switch.update(now=60.0, used=0.0, committed=0.0)
    assert switch.engagements == 1


def test_a_committed_footprint_past_the_budget_engages_before_the_kv_fills() -> None:
    # Many programs just started: little KV in use yet, their predicted footprints past budget.
    switch = EngageSwitch(engage_at=0.5, commit_at=1.0, window_s=10.0)
    switch.update(now=0.0, used=0.0, committed=0.0)
    assert switch.update(now=30.0, used=0.0, committed=2.0)
    assert switch.load < 0.1 and switch.commitment > 1.0
    assert not switch.update(now=60.0, used=0.0, committed=0.0)


def test_engage_at_zero_keeps_the_rules_on() -> None:
    switch = EngageSwitch(engage_at=0.0, commit_at=1.0, window_s=10.0)
    assert switch.engaged
    assert switch.update(now=100.0, used=0.0, committed=0.0)
    assert switch.engagements == 0


def test_time_standing_still_changes_nothing() -> None:
    switch = EngageSwitch(engage_at=0.5, commit_at=1.0, window_s=10.0)
    switch.update(now=5.0, used=0.2, committed=0.1)
    switch.update(now=5.0, used=0.9, committed=0.9)  # same instant: no weight
    assert (switch.load, switch.commitment) == (0.2, 0.1)


def test_bad_levels_are_refused() -> None:
    for bad in ({"engage_at": -0.1}, {"engage_at": 5.0}, {"commit_at": -1.0}, {"window_s": 0.0}):
        options = {"engage_at": 0.5, "commit_at": 1.0, "window_s": 10.0} | bad
        with pytest.raises(ValueError):
            EngageSwitch(**options)
