"""What the plug-in keeps about clients is bounded by bytes and by reason class, whatever they send."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from adapters.vllm.turns import TurnTracker, reason_class
from lamps_agent.hints import MAX_PRIORITY, LampsHints
from lamps_agent.request import KVStrategy


def _hints(session: str = "s", **kw: object) -> dict[str, object]:
    values: dict[str, object] = dict(
        session_id=session, priority=0, agent="a", step=0, output_tokens=10, tool=None,
        tool_duration=0.0, kv_strategy=KVStrategy.DISCARD,
    )  # fmt: skip
    values.update(kw)
    return LampsHints(**values).to_xargs()  # type: ignore[arg-type]


def test_huge_session_ids_are_never_kept() -> None:
    t = TurnTracker(default_output_tokens=10)
    for i in range(600):
        t.read(None, f"{i}" + "x" * 1_000_000, None, None)
    assert t.sessions == {} and t.session_bytes == 0
    assert t.counters.malformed == 600


def test_session_memory_is_bounded_by_bytes() -> None:
    t = TurnTracker(default_output_tokens=10)
    for i in range(200_000):
        t.read(None, f"{i:0>250}", None, None)
    assert t.session_bytes <= 16 * 2**20 and len(t.sessions) <= 100_000
    assert t.session_bytes == sum(len(k) + 200 for k in t.sessions)


def test_malformed_reasons_are_counted_by_class() -> None:
    t = TurnTracker(default_output_tokens=10)
    for version in range(2, 5002):
        t.read({"lamps_hint_version": version}, "s", None, None)
    assert t.counters.malformed == 5000
    assert len(t.counters.reasons) == 1
    assert reason_class("hint lamps_step must be int, got 'x'") == "hint lamps_step must be int"


def test_a_priority_beyond_int32_is_clamped_not_a_reason_to_drop_the_hints() -> None:
    t = TurnTracker(default_output_tokens=10)
    xargs = _hints()
    del xargs["lamps_priority"]
    info = t.read(xargs, "s", 2**40, None)
    assert info.hinted and t.counters.ok == 1 and t.counters.malformed == 0
    assert MAX_PRIORITY == 2**31 - 1


def test_a_hint_set_missing_its_kv_strategy_is_counted_not_raised() -> None:
    """Found by ``benchmarks/chaos.py engine``: the reader raised KeyError, which the plug-in
    counted as an error of its own and logged with a traceback per request."""
    t = TurnTracker(default_output_tokens=10)
    xargs = _hints()
    del xargs["lamps_kv_strategy"]
    info = t.read(xargs, "s", 0, 8)
    assert not info.hinted and t.counters.malformed == 1
    assert t.counters.reasons == {"missing hint lamps_kv_strategy": 1}


def test_a_huge_malformed_value_is_not_copied_into_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by ``benchmarks/chaos.py engine``: a 1 MB ``lamps_kv_strategy`` was logged whole."""
    t = TurnTracker(default_output_tokens=10)
    xargs = _hints()
    xargs["lamps_kv_strategy"] = "p" * 1_000_000
    with caplog.at_level("WARNING", logger="lamps.vllm"):
        t.read(xargs, "s", 0, 8)
    assert t.counters.malformed == 1
    assert caplog.records and all(len(r.getMessage()) < 500 for r in caplog.records)


def test_a_turn_knows_its_agent_and_step_hinted_or_counted() -> None:
    """What the program policy links a session's turns by (agent, step, session)."""
    t = TurnTracker(default_output_tokens=10)
    hinted = t.read(_hints(session="h", agent="coder", step=3), "h", 0, None)
    assert (hinted.agent, hinted.step, hinted.session_id) == ("coder", 3, "h")
    huge = t.read(_hints(session="h", step=2**31 - 1), "h", 0, None)
    assert huge.step == 1_000_000  # clamped: a program's step, not an int32
    unhinted = [t.read(None, "u", None, None) for _ in range(2)]
    assert [i.step for i in unhinted] == [0, 0]  # no turn of "u" has ended yet
    t.turn_ended(unhinted[0], 12)
    assert t.read(None, "u", None, None).step == 1 and unhinted[0].agent is None


def test_a_hinted_tenant_reaches_the_turn_and_a_bad_one_is_counted() -> None:
    """The tenant the middleware sends is what the core's fair share groups by."""
    t = TurnTracker(default_output_tokens=10)
    assert t.read(_hints(session="a", tenant="acme"), "a", 0, None).tenant == "acme"
    assert t.read(_hints(session="b"), "b", 0, None).tenant is None
    bad = _hints(session="c")
    bad["lamps_tenant"] = ""
    assert t.read(bad, "c", 0, None).tenant is None
    assert t.counters.malformed == 1


def test_a_tenant_holds_when_the_rest_of_the_hints_is_malformed() -> None:
    """A tenant the server derived stays the turn's when the client's own hints cannot be read:
    a malformed hint is no way out of one's share."""
    t = TurnTracker(default_output_tokens=10)
    broken = _hints(session="d", tenant="key-0123456789ab")
    broken["lamps_step"] = "NaN"
    info = t.read(broken, "d", 0, None)
    assert not info.hinted and info.tenant == "key-0123456789ab"
    assert t.counters.malformed == 1
    assert t.read({"lamps_tenant": 7, "lamps_step": "x"}, "e", 0, None).tenant is None
