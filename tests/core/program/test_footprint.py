"""Footprint prediction: per-agent history of turns and growth, the prior, the engine's cap."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lamps_agent.policies.program import Footprint, FootprintPredictor
from lamps_agent.policies.program.footprint import capped
from tests.core.program.helpers import serving_turn


def test_footprint_predictor_uses_the_prior_then_learns_per_agent() -> None:
    fp = FootprintPredictor(prior_turns=8, prior_growth=1000, min_programs=3)
    assert fp.predict(agent="coder", step=0, context=4000).peak == pytest.approx(12_000)
    for turns, peak in ((4, 5000), (4, 5000), (6, 7000)):  # 1000 tokens per turn
        fp.observe(agent="coder", turns=turns, first_prompt=1000, peak=peak)
    assert fp.known("coder") and not fp.known("chat")
    assert fp.learned() == 1
    start = fp.predict(agent="coder", step=0, context=1000)
    assert start.growth == pytest.approx(1000)
    assert start.remaining_turns == pytest.approx(14 / 3)  # mean of 4, 4, 6
    late = fp.predict(agent="coder", step=4, context=5000)  # only the 6-turn program went on
    assert late.remaining_turns == pytest.approx(2)
    assert late.peak == pytest.approx(7000)
    past = fp.predict(agent="coder", step=9, context=10_000)  # longer than any seen: one more
    assert past.remaining_turns == pytest.approx(1)
    assert fp.predict(agent="chat", step=0, context=500).peak == pytest.approx(8500)


@dataclass
class _Turn:
    agent: str
    step: int
    output_tokens: int
    prompt_tokens: int | None
    session_id: str | None


def test_footprint_predictor_learns_from_recorded_turns() -> None:
    records = [_Turn("coder", step, 100, 1000 + 600 * step, "s1") for step in range(5)] + [
        _Turn("coder", 0, 100, None, "s2"),
        _Turn("coder", 0, 100, 500, None),
    ]
    fp = FootprintPredictor(min_programs=1)
    assert fp.seed_from_turns(records) == 1  # s2 has no prompt sizes, the last no session
    got = fp.predict(agent="coder", step=0, context=1000)
    assert got.remaining_turns == pytest.approx(5)
    assert got.growth == pytest.approx((1000 + 2400 + 100 - 1000) / 5)


def test_a_request_is_predicted_from_its_agent_step_and_context() -> None:
    fp = FootprintPredictor(prior_turns=8, prior_growth=1000)
    turn = serving_turn(1, session="s1", step=3, prompt=2000)  # the session's fourth turn
    assert fp.for_request(turn) == fp.predict(agent="coder", step=3, context=2000)
    assert fp.for_request(turn).remaining_turns == 5


def test_bad_priors_are_refused() -> None:
    for bad in ({"prior_turns": 0.5}, {"prior_growth": -1.0}, {"min_programs": 0}):
        with pytest.raises(ValueError):
            FootprintPredictor(**bad)
    with pytest.raises(ValueError):
        FootprintPredictor().observe(agent="a", turns=0, first_prompt=1, peak=2)


def test_no_predicted_peak_outgrows_the_engines_context() -> None:
    fp = Footprint(peak=12_100.0, remaining_turns=8, growth=1500)
    assert capped(fp, context=100, max_context=float("inf")) is fp
    assert capped(fp, context=100, max_context=1_000) == Footprint(1_000.0, 8, 1500)
    # A context already past the limit is not predicted to shrink.
    assert capped(fp, context=2_000, max_context=1_000).peak == 2_000
