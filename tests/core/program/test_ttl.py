"""A pin's time to live: tool-duration samples, Continuum's cost-benefit rule, the deadlines."""

from __future__ import annotations

import math

import pytest

from lamps_agent.policies.program import PinDeadlines, ToolDurations, ttl_by_cost_benefit
from lamps_agent.policies.program.ttl import PinLosses, risk_weighted_pin_cost
from lamps_agent.scheduler import PausedKV


def test_ttl_rule_pins_as_long_as_the_held_memory_is_worth_it() -> None:
    durations = [1.0, 2.0, 3.0, 4.0]
    # Cheap to hold (1 token): pin until every call has returned.
    assert ttl_by_cost_benefit(durations, context_tokens=1, fallback_waste=10) == (4.0, 2.5)
    # Expensive to hold: every TTL costs more than not pinning at all.
    assert ttl_by_cost_benefit(durations, context_tokens=10, fallback_waste=10) == (0.0, 10)
    # In between: pin for the bulk of the distribution, not its tail.
    tau, _ = ttl_by_cost_benefit([1.0] * 9 + [100.0], context_tokens=1, fallback_waste=5)
    assert tau == 1.0
    assert ttl_by_cost_benefit([], context_tokens=1, fallback_waste=5) == (0.0, 5)


def test_a_tools_durations_come_from_a_prior_until_enough_are_seen() -> None:
    durations = ToolDurations(window=4, min_samples=3, prior_sigma=1.0)
    prior = durations.samples("search", predicted=2.0)
    assert len(prior) == len(ToolDurations.PRIOR_QUANTILES) and prior == sorted(prior)
    assert prior[0] == pytest.approx(2.0 * math.exp(-0.5))  # the median: mean 2 s, sigma 1
    for d in (3.0, 1.0, math.inf, -1.0, 2.0):  # the infinite and negative are not durations
        durations.observe("search", d)
    assert durations.samples("search", predicted=99.0) == [1.0, 2.0, 3.0]
    for d in (5.0, 6.0):  # a window of the last 4
        durations.observe("search", d)
    assert durations.samples("search", predicted=99.0) == [1.0, 2.0, 5.0, 6.0]
    assert durations.samples(None, predicted=2.0) == prior  # a pause with no named tool


def _pin(key: str) -> PausedKV:
    return PausedKV(key=key, tokens=100, blocks=7, paused_at=0.0, predicted_return=5.0)


def test_a_pin_is_revisited_once_at_its_deadline() -> None:
    pins = PinDeadlines()
    pins.set("s1", now=10.0, ttl=2.0)
    pins.set("s2", now=10.0, ttl=5.0)
    assert pins.take_ttl("s1") == 2.0 and pins.take_ttl("s1") is None  # asked once
    s1, s2 = _pin("s1"), _pin("s2")
    assert pins.due([s1, s2], now=11.9) == []
    assert pins.due([s1, s2], now=12.0) == [s1]
    assert pins.due([s1, s2], now=13.0) == []  # forgotten once due
    assert pins.due([s2], now=15.0) == [s2] and len(pins) == 0


def test_deadlines_of_pins_that_left_otherwise_do_not_pile_up() -> None:
    pins = PinDeadlines()
    for i in range(100):  # pins released under pressure or resumed: never revisited here
        pins.set(f"gone{i}", now=0.0, ttl=1e9)
    pins.set("live", now=0.0, ttl=1e9)
    assert pins.due([_pin("live")], now=1.0) == []
    assert len(pins) == 1


def test_the_share_of_pins_lost_follows_the_recent_pins() -> None:
    losses = PinLosses(memory=4)
    assert losses.share == 0.0  # no pin given yet: no risk measured
    losses.given()
    losses.lost()
    assert losses.share == 1.0
    for _ in range(20):  # pins that survive: the old loss fades
        losses.given()
    assert losses.share < 0.01
    for _ in range(12):  # pressure: every pin given is lost
        losses.given()
        losses.lost()
    assert losses.share > 0.9
    with pytest.raises(ValueError, match="memory"):
        PinLosses(memory=0)


def test_a_pins_cost_counts_the_discard_it_ends_as_when_lost() -> None:
    assert risk_weighted_pin_cost(2.0, loss_share=0.0, discard_waste=50.0) == 2.0
    assert risk_weighted_pin_cost(2.0, loss_share=1.0, discard_waste=50.0) == 50.0
    assert risk_weighted_pin_cost(2.0, loss_share=0.25, discard_waste=50.0) == pytest.approx(14.0)
