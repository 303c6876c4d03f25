"""The engage switch: time-averaged KV load and commitment, with hysteresis."""

from __future__ import annotations

import math

import pytest

from lamps_agent.policies.program import RELEASE_FRACTION, EngageSwitch
from lamps_agent.policies.timescale import ProgramLifetimes


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


def test_the_derived_window_is_two_program_lifetimes_and_waits_for_a_time_scale() -> None:
    """No wall-clock constant: until a tool has returned nothing is averaged (a new program's
    prior footprint alone is not a sustained load); then the window is two lifetimes, each a
    turn's cycle times the expected turns until a program has finished, then measured."""
    switch = EngageSwitch(
        engage_at=0.5, commit_at=1.0, window_s=None, lifetimes=ProgramLifetimes(expected_turns=8.0)
    )
    assert not switch.update(now=1.0, used=0.9, committed=3.0)
    assert (switch.load, switch.commitment) == (0.0, 0.0) and math.isnan(switch.window())
    switch.lifetimes.observe_cycle(0.5)
    assert switch.window() == pytest.approx(2 * 0.5 * 8)
    assert not switch.update(now=2.0, used=0.0, committed=0.0)  # the first look with a scale
    switch.update(now=10.0, used=0.9, committed=0.0)
    assert switch.load == pytest.approx(0.9 * (1 - math.exp(-8.0 / 8.0)))
    for seconds in (4.0, 6.0, 5.0, math.nan, -1.0):  # nonsense is not a lifetime
        switch.lifetimes.observe(seconds)
    assert switch.lifetimes.median == pytest.approx(5.0)
    assert switch.window() == pytest.approx(10.0)
    assert EngageSwitch(engage_at=0.5, commit_at=1.0, window_s=7.0).window() == 7.0


def test_the_derived_window_follows_the_workloads_time_scale() -> None:
    """The same programs with every tool 20x shorter (a replay at time scale 0.05): the window
    the policy derives shrinks with them, so the rules engage the same way at either scale."""
    from lamps_agent.policies import make_policy
    from lamps_agent.predictors import make_predictor
    from lamps_agent.presets import load_preset
    from lamps_agent.sim import RunLabels, Simulator
    from lamps_agent.workloads import poisson_workload
    from tests.core.conftest import make_program

    preset = load_preset("h100-llama3-8b")
    windows = []
    for scale in (1.0, 0.05):
        turns = [(40, 20.0 * scale, 200)] * 4
        scaled = [make_program(f"p{i}", turns, agent="x") for i in range(8)]
        arrivals = poisson_workload(scaled, qps=0.05 / scale, seed=1, num_programs=16)
        policy = make_policy("program", predictor=make_predictor("oracle"), preset=preset)
        Simulator(preset=preset, policy=policy, arrivals=arrivals).run(
            RunLabels(policy="program", predictor="oracle")
        )
        windows.append(policy.switch.window())
    assert windows[0] == pytest.approx(2 * (3 * 20.0), rel=0.1)  # tools dominate: 3 x 20 s
    assert windows[1] < windows[0] / 10  # the decode time (~1 s a program here) does not scale


def test_the_lifetime_medians_follow_every_new_sample() -> None:
    lifetimes = ProgramLifetimes(expected_turns=4)
    assert math.isnan(lifetimes.median) and math.isnan(lifetimes.cycle)
    lifetimes.observe_cycle(2.0)
    assert lifetimes.cycle == 2.0 and lifetimes.median == 8.0  # 4 expected turns of 2 s
    lifetimes.observe_cycle(4.0)
    assert lifetimes.cycle == 3.0 and lifetimes.median == 12.0  # read again after a sample
    lifetimes.observe(10.0)
    lifetimes.observe(20.0)
    lifetimes.observe(30.0)
    assert lifetimes.median == 20.0
    lifetimes.observe(float("nan"))  # ignored
    assert lifetimes.median == 20.0
