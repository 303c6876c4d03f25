"""Waste and area equations against hand-computed cases."""

import math

import numpy as np
import pytest

from lamps_agent.area import Timing, TurnShape, area_decode, area_prefill, turn_area
from lamps_agent.cost_model import CostModel
from lamps_agent.presets import load_preset
from lamps_agent.request import KVStrategy
from lamps_agent.strategy import choose_strategy, least_waste_rule
from lamps_agent.waste import (
    EngineLoad,
    discard_waste,
    discard_waste_array,
    preserve_waste,
    swap_waste,
)

GPTJ = CostModel(base_ms=10.0, prefill_ms_per_token=0.0463, decode_ms_per_seq=0.0463)


def test_preserve_waste_is_remaining_time_times_context() -> None:
    assert preserve_waste(1000, 2.5) == 2500
    assert preserve_waste(1000, -1.0) == 0  # the call already overran its prediction


def test_discard_waste_by_hand() -> None:
    # S = 384, B_run = 64 -> c_h = 320; C = 1000 -> n = ceil(1000/320) - 1 = 3, r = 1000 mod 320 = 40
    # f_s = (0.0463*384 + 10)/1000 = 0.0277792 ; f_ch = 0.0000463*320 = 0.014816 ; f_last = 0.001852
    # W = f_s*320*3*4/2 + f_ch*3*R + f_last*(R + r), R = 40_000
    load = EngineLoad(running_tokens=40_000, batch_query_tokens=64)
    expected = 0.0277792 * 320 * 6 + 0.014816 * 3 * 40_000 + 0.001852 * 40_040
    assert discard_waste(1000, load, GPTJ, 384) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(1905.41, abs=0.01)


def test_discard_waste_small_context_is_one_chunk() -> None:
    load = EngineLoad(running_tokens=100, batch_query_tokens=0)
    # c_h = 384 > C = 50: n = 0, r = 50 -> f_last*(R + r) = 0.0000463*50*150
    assert discard_waste(50, load, GPTJ, 384) == pytest.approx(0.0000463 * 50 * 150)
    assert discard_waste(0, load, GPTJ, 384) == 0


def test_discard_waste_array_matches_scalar() -> None:
    load = EngineLoad(running_tokens=12_345, batch_query_tokens=100)
    contexts = np.array([0, 1, 50, 284, 285, 1000, 7777], dtype=float)
    vector = discard_waste_array(contexts, load, GPTJ, 384)
    for c, w in zip(contexts, vector, strict=True):
        assert w == pytest.approx(discard_waste(float(c), load, GPTJ, 384))


def test_swap_waste_is_two_transfers_times_the_stalled_batch() -> None:
    cost = CostModel(
        base_ms=10, prefill_ms_per_token=0.05, decode_ms_per_seq=0.05, swap_bytes_per_s=1e9
    )
    # 1000 tokens x 1000 B = 1 MB -> 1 ms each way; the batch (5000) and the context (1000) wait 2 ms
    assert swap_waste(1000, 5000, cost, 1000) == pytest.approx(2 * 0.001 * 6000)
    assert swap_waste(1000, 0, cost, 1000) == pytest.approx(2 * 0.001 * 1000)  # never free


def test_area_integrals_by_hand() -> None:
    # KV grows 100, 101, 102 over 3 steps of 0.01 s: 0.01*(100*3 + 3) = 3.03
    assert area_decode(100, 3, 0.01) == pytest.approx(3.03)
    assert area_prefill(100, 50, 0.2) == pytest.approx(0.2 * 125)


def _timing() -> Timing:
    return Timing(
        tau=0.02, prefill_seconds=lambda x: 0.001 * x, transfer_seconds=lambda t: 0.0001 * t
    )


def test_turn_area_per_strategy_by_hand() -> None:
    turn = TurnShape(
        prompt=100, output=10, has_tool=True, tool_duration=5.0, returned=20, next_output=10
    )
    timing = _timing()
    common = area_prefill(0, 100, 0.1) + area_decode(100, 10, 0.02)  # 5 + 20.9
    tail = area_decode(130, 10, 0.02)  # 0.02*(1300+45) = 26.9
    c1 = 110
    preserve = common + c1 * 5.0 + area_prefill(c1, 20, 0.02) + tail
    discard = common + area_prefill(0, 130, 0.13) + tail
    swap = common + 2 * c1 * 0.011 + area_prefill(c1, 20, 0.02) + tail
    assert turn_area(turn, KVStrategy.PRESERVE, timing) == pytest.approx(preserve)
    assert turn_area(turn, KVStrategy.DISCARD, timing) == pytest.approx(discard)
    assert turn_area(turn, KVStrategy.SWAP, timing) == pytest.approx(swap)
    last = TurnShape(prompt=100, output=10, has_tool=False)
    assert turn_area(last, KVStrategy.PRESERVE, timing) == pytest.approx(common)


def test_choose_strategy_prefers_preserve_for_short_calls_and_not_for_long_ones() -> None:
    assert choose_strategy(context_tokens=1000, tool_duration=0.0001) is KVStrategy.PRESERVE
    assert choose_strategy(context_tokens=1000, tool_duration=0.7) is KVStrategy.PRESERVE
    assert choose_strategy(context_tokens=1000, tool_duration=30) is KVStrategy.SWAP
    no_swap = choose_strategy(context_tokens=1000, tool_duration=30, swap_allowed=False)
    assert no_swap is KVStrategy.DISCARD
    with pytest.raises(ValueError):
        choose_strategy(context_tokens=math.nan, tool_duration=1)


@pytest.mark.parametrize("preset", ["a100-gptj6b", "h100-llama3-8b", "h200-llama3-70b-tp4"])
@pytest.mark.parametrize("swap_allowed", [True, False])
def test_least_waste_rule_answers_as_choose_strategy(preset: str, swap_allowed: bool) -> None:
    """The precomputed rule the LangChain middleware runs per model call is choose_strategy."""
    p = load_preset(preset)
    idle = EngineLoad(running_tokens=0.0, batch_query_tokens=0.0)
    for load in (None, idle):
        rule = least_waste_rule(p, load, swap_allowed=swap_allowed)
        seen = set()
        for context in (0, 1, 17, 255.5, 1_000, 4_096, 30_000, 131_072):
            for duration in (0.0, 1e-4, 0.05, 0.7, 3.0, 30.0, 600.0):
                want = choose_strategy(
                    context_tokens=context,
                    tool_duration=duration,
                    preset=p,
                    load=load,
                    swap_allowed=swap_allowed,
                )
                assert rule(context, duration) is want, (context, duration)
                seen.add(want)
        assert len(seen) >= 2  # the grid reaches more than one strategy
    with pytest.raises(ValueError):
        least_waste_rule(p)(math.nan, 1.0)
