"""The programs in flight: their committed footprint, the part on the GPU, and forgetting."""

from __future__ import annotations

import pytest

from lamps_agent.policies.program import ProgramsInFlight
from lamps_agent.scheduler import PausedKV


def _table(*terms: float) -> ProgramsInFlight:
    table = ProgramsInFlight()
    for i, term in enumerate(terms):
        table.enter(f"s{i}", agent="a", first_prompt=100, term=term, turn=i, now=0.0)
    return table


def _pin(key: str) -> PausedKV:
    return PausedKV(key=key, tokens=100, blocks=7, paused_at=0.0, predicted_return=5.0)


def test_programs_enter_in_order_and_their_terms_add_up() -> None:
    table = _table(100.0, 250.0)
    assert table.committed == 350.0 and table.admissions == 2
    assert [table[k].admitted_seq for k in table] == [1, 2]
    assert table.resident(()) == 350.0
    table.turn_started(
        table["s0"], term=150.0, turn=10, now=1.0
    )  # its next turn: the term is its own
    assert table.committed == 400.0 and table["s0"].last_seen == 1.0 and table["s0"].turn == 10
    assert table.leave("s1") is not None and table.leave("s1") is None
    assert table.leave("s0") is not None
    assert not table and table.committed == 0.0 and table.resident(()) == 0.0


def test_a_program_in_a_tool_counts_on_the_gpu_only_while_pinned() -> None:
    table = _table(100.0, 250.0)
    table.tool_called(table["s1"], now=2.0, gap=10.0, grace=30.0)
    assert table["s1"].in_tool and table["s1"].overdue_at == 2.0 + 2 * 10.0 + 30.0
    assert table.committed == 350.0  # still in flight
    assert table.resident(()) == 100.0  # its KV swapped or discarded: none held
    assert table.resident([_pin("s1"), _pin("elsewhere")]) == 350.0  # pinned: held whole
    table.tool_called(table["s1"], now=3.0, gap=10.0, grace=30.0)  # a second report counts it once
    assert table.resident(()) == 100.0
    table.turn_started(table["s1"], term=300.0, turn=11, now=20.0)  # back: counted again, whole
    assert not table["s1"].in_tool and table.resident(()) == 400.0


def test_the_stale_the_overdue_and_the_aborted_are_forgotten() -> None:
    table = _table(1.0, 2.0, 3.0, 4.0)
    table.tool_called(table["s1"], now=0.0, gap=1.0, grace=30.0)  # overdue at 32 s
    table["s2"].left = True  # its turn left the GPU and nothing followed: an abort
    table["s0"].last_seen = -70.0  # not heard of in stale_s
    dropped = table.drop_stale(now=40.0, stale_s=100.0)
    assert sorted(f.term for f in dropped) == [1.0, 2.0, 3.0]
    assert list(table) == ["s3"] and table.committed == pytest.approx(4.0)
    assert table.drop_stale(now=40.0, stale_s=100.0) == []
    table["s3"].last_seen = -70.0
    table["s3"].waiting = True  # its turn waits in the queue: alive, however long
    assert table.drop_stale(now=40.0, stale_s=100.0) == []
    table["s3"].waiting = False
    assert [f.term for f in table.drop_stale(now=40.0, stale_s=100.0)] == [4.0]


def test_no_float_drift_is_left_once_every_program_has_left() -> None:
    table = _table(0.1, 0.2, 0.7)
    table.tool_called(table["s2"], now=0.0, gap=1.0, grace=30.0)
    for key in ("s2", "s0", "s1"):
        table.leave(key)
    assert table.committed == 0.0 and table.resident(()) == 0.0
