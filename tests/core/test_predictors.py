import statistics

import pytest

from lamps_agent.errors import UnknownNameError
from lamps_agent.predictors import (
    HistoryPredictor,
    Outcome,
    PredictionQuery,
    StaticHints,
    make_predictor,
)
from lamps_agent.program import Segment

SEG = Segment(
    prompt_tokens=100, output_tokens=200, tool="search", tool_duration=10.0, returned_tokens=30
)


def _query(step: int = 0, tool: str | None = "search", agent: str = "qa") -> PredictionQuery:
    return PredictionQuery(agent=agent, step=step, tool=tool, prompt_tokens=100, truth=SEG)


def test_oracle_returns_the_truth() -> None:
    p = make_predictor("oracle").predict(_query())
    assert (p.output_tokens, p.tool, p.tool_duration, p.returned_tokens) == (
        200,
        "search",
        10.0,
        30,
    )


def test_oracle_without_truth_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs the true segment"):
        make_predictor("oracle").predict(
            PredictionQuery(agent="a", step=0, tool=None, prompt_tokens=5)
        )


def test_noisy_error_has_the_requested_spread_and_is_seeded() -> None:
    a = make_predictor("noisy:40", seed=3)
    b = make_predictor("noisy:40", seed=3)
    outs_a = [a.predict(_query()).tool_duration for _ in range(4000)]
    outs_b = [b.predict(_query()).tool_duration for _ in range(4000)]
    assert outs_a == outs_b
    rel = [o / 10.0 - 1 for o in outs_a]
    assert abs(statistics.mean(rel)) < 0.03
    assert statistics.pstdev(rel) == pytest.approx(0.40, abs=0.03)
    assert min(outs_a) >= 0
    zero = make_predictor("noisy:0").predict(_query())
    assert zero.tool_duration == 10.0 and zero.output_tokens == 200


def test_history_falls_back_from_specific_to_general_to_hints_to_default() -> None:
    h = HistoryPredictor(hints=StaticHints({"search": 2.0}), default_output_tokens=64)
    first = h.predict(_query())
    assert first.output_tokens == 64 and first.tool_duration == 2.0  # default and hint
    assert h.predict(_query(tool="unknown")).tool_duration == 5.0  # global default
    h.observe(
        _query(step=0),
        Outcome(output_tokens=100, tool="search", tool_duration=4.0, returned_tokens=8),
    )
    h.observe(
        _query(step=1),
        Outcome(output_tokens=300, tool="search", tool_duration=6.0, returned_tokens=8),
    )
    assert h.predict(_query(step=0)).output_tokens == 100  # (agent, step, tool)
    assert h.predict(_query(step=7)).output_tokens == 200  # (agent, tool) mean
    assert h.predict(_query(step=7, agent="other")).output_tokens == 200  # (tool)
    assert h.predict(_query()).tool_duration == 5.0  # running mean replaces the hint
    assert h.predict(_query()).returned_tokens == 8


def test_history_survives_a_broken_hint_source() -> None:
    class Broken:
        def estimate(self, tool: str):  # type: ignore[no-untyped-def]
            raise ConnectionError("db down")

    assert HistoryPredictor(hints=Broken()).predict(_query()).tool_duration == 5.0


def test_unknown_predictor_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid: history, learned, noisy, oracle"):
        make_predictor("psychic")
    with pytest.raises(ValueError, match="takes no argument"):
        make_predictor("oracle:3")


def test_a_sessions_history_predicts_its_next_unhinted_turn() -> None:
    from lamps_agent.predictors.session import SessionTable

    table = SessionTable(max_sessions=2)
    first = table.estimate("s", 0.0, default_output=128.0, max_tokens=None)
    assert (first.output_tokens, first.tool, first.step) == (128.0, None, 0)
    table.turn_ended("s", 40, 1.0, hinted_final=False)
    second = table.estimate("s", 4.0, default_output=128.0, max_tokens=30)
    assert second.output_tokens == 30.0  # the mean (40), capped by the request's max_tokens
    assert (second.tool, second.tool_duration, second.step) == ("unknown", 3.0, 1)
    assert table.mean_gap("s") == 3.0 and table.may_continue("s", hinted=False, tool=None)
    table.estimate("a", 5.0, default_output=1.0, max_tokens=None)
    table.estimate("b", 6.0, default_output=1.0, max_tokens=None)  # over the bound: oldest half
    assert "s" not in table.sessions and len(table.sessions) == 2
