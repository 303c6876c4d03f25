"""The capacity bound: KV time-integrals alone (kept / dropped), the compute bound, the table."""

from __future__ import annotations

import dataclasses

import pytest

from lamps_agent.bench.capacity import Bracket
from lamps_agent.bench.capacity_bound import (
    CapacityBound,
    capacity_bound,
    compute_seconds,
    kv_time_integral,
    program_work,
)
from lamps_agent.bench.tables import Capacity, capacity_markdown, capacity_table
from lamps_agent.cost_model import CostModel
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program, Segment


def _preset(**cost: float) -> Preset:
    """Only a per-step cost unless told: every step takes ``base_ms``."""
    base = load_preset("a100-gptj6b")
    fields = {
        "base_ms": 10.0,
        "prefill_ms_per_token": 0.0,
        "decode_ms_per_seq": 0.0,
        "kv_ms_per_token": 0.0,
        "prefill_attn_ms_per_mtok2": 0.0,
    }
    return dataclasses.replace(base, cost=CostModel(**{**fields, **cost}), token_budget=100)


def _program(*, tool_s: float = 2.0) -> Program:
    return Program(
        program_id="p",
        agent="a",
        segments=(
            Segment(
                prompt_tokens=150,
                output_tokens=3,
                tool="t",
                tool_duration=tool_s,
                returned_tokens=47,
            ),
            Segment(prompt_tokens=200, output_tokens=2),
        ),
    )


def test_kv_integral_alone_kept_and_dropped() -> None:
    preset = _preset()  # 10 ms a step, chunks of 100 tokens
    program = _program(tool_s=2.0)
    # Turn 1: prefill 100 then 150 (held 100, then 150, a step each), decode 2 steps holding
    # 151 and 152 tokens.  Turn 2 kept: prefill the 47 new tokens (200 held), 1 decode (201).
    turn1 = (100 + 150 + 151 + 152) * 0.01
    kept = turn1 + 153 * 2.0 + (200 + 201) * 0.01
    # Dropped: nothing during the tool; turn 2 prefills all 200 again (100, 200), 1 decode.
    dropped = turn1 + (100 + 200 + 201) * 0.01
    assert kv_time_integral(program, preset, keep=True) == pytest.approx(kept)
    assert kv_time_integral(program, preset, keep=False) == pytest.approx(dropped)


def test_kv_read_cost_enters_the_decode_steps() -> None:
    preset = _preset(kv_ms_per_token=1.0)  # a step also takes 1 ms per token it holds
    one = Program(program_id="q", agent="a", segments=(Segment(prompt_tokens=10, output_tokens=3),))
    prefill = 10 * (10 + 1.0 * 0) * 0.001  # the prefill step reads no prior KV
    decode = sum(x * (10 + x) * 0.001 for x in (11, 12))
    assert kv_time_integral(one, preset, keep=True) == pytest.approx(prefill + decode)


def test_compute_bound_shares_the_step_cost_over_a_full_batch() -> None:
    preset = dataclasses.replace(
        _preset(prefill_ms_per_token=0.1, decode_ms_per_seq=0.2, kv_ms_per_token=0.01),
        max_num_seqs=4,
    )
    program = _program()
    prefill, decode = 150 + 47, 3 + 2  # the first prompt and the return: the KV kept
    steps = max((prefill + decode) / 100, decode / 4)  # the KV (57k tokens) holds any batch
    reads = (151 + 152) + 201  # the decode steps after each prefill: turn 1's two, turn 2's one
    ms = prefill * 0.1 + decode * 0.2 + 0.01 * reads + 10.0 * steps
    assert compute_seconds([program], preset) == pytest.approx(ms / 1000)


def test_a_step_holds_no_more_kv_than_the_engine_has() -> None:
    """With room for two contexts of ~200 tokens, no step batches more than two decodes, however
    many seats: the step cost is shared by the batch the KV holds."""
    base = _preset()
    preset = dataclasses.replace(base, max_num_seqs=256, gpu_kv_gb=25 * base.block_bytes / 1e9)
    assert preset.gpu_kv_tokens == 400  # 25 blocks of 16
    program = _program()
    work = program_work(program, preset)
    # Prefill 150 in the fewest steps, the partial chunk first: 50, then 150 held; decodes
    # hold 151 and 152; turn 2 prefills 47 new tokens (200 held), one decode (201).
    assert work.kv_token_steps == pytest.approx(50 + 150 + 151 + 152 + 200 + 201)
    steps = work.kv_token_steps / 400  # more than (197 + 5) / 100 and 5 / 256
    assert compute_seconds([program], preset) == pytest.approx(10.0 * steps / 1000)


def test_the_step_counts_are_totals_over_the_run_not_per_program() -> None:
    """One program's prefill shares steps with another's decodes: the fewest steps are the
    largest of the totals, not the sum of each program's largest."""
    preset = dataclasses.replace(_preset(), max_num_seqs=1)
    prefill_heavy = Program(
        program_id="p", agent="a", segments=(Segment(prompt_tokens=1000, output_tokens=1),)
    )
    decode_heavy = Program(
        program_id="d", agent="a", segments=(Segment(prompt_tokens=1, output_tokens=10),)
    )
    # per program: max(1001/100, 1/1) = 10.01 and max(11/100, 10/1) = 10 steps, 20.01 in all;
    # together max(1012/100, 11/1) = 11 steps for the two
    both = compute_seconds([prefill_heavy, decode_heavy], preset)
    assert both == pytest.approx(10.0 * 11 / 2 / 1000)


def test_the_bound_is_the_better_kv_variant_capped_by_compute() -> None:
    b = CapacityBound(kv_kept=3.0, kv_dropped=8.0, compute=6.0)
    assert b.bound == 6.0 and b.limit == "compute"
    b = CapacityBound(kv_kept=3.0, kv_dropped=4.0, compute=6.0)
    assert b.bound == 4.0 and b.limit == "kv"
    preset = load_preset("a100-gptj6b")
    got = capacity_bound([_program(tool_s=60.0)], preset)
    assert got.kv_kept < got.kv_dropped  # a long tool: holding its KV costs capacity
    assert got.kv_kept == pytest.approx(
        preset.gpu_kv_tokens / kv_time_integral(_program(tool_s=60.0), preset, keep=True)
    )
    with pytest.raises(ValueError):
        capacity_bound([], preset)


def test_capacity_tables_show_the_bound_and_the_share_reached() -> None:
    caps = [
        Capacity(policy="a", stable=Bracket(low=2.0, high=2.2), p99=None, evaluations=3),
        Capacity(policy="b", stable=Bracket(low=4.0, high=None), p99=None, evaluations=2),
    ]
    bound = CapacityBound(kv_kept=3.0, kv_dropped=8.0, compute=5.0)
    md = capacity_markdown(caps, p99_target=None, bound=bound)
    assert "| bound qps | share of bound |" in md
    assert "| a | 2 | 2 – 2.2 | 5 | 40% |" in md
    assert "| b | ≥ 4 | 4 – — | 5 | ≥ 80% |" in md
    assert "compute-bound" in md
    table = capacity_table(caps, p99_target=None, bound=bound)
    assert [c.header for c in table.columns][3:5] == ["bound qps", "of bound"]
    plain = capacity_markdown(caps, p99_target=None)
    assert "bound" not in plain
