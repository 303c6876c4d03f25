"""Hints in vLLM's typed KV-hint envelope: one ``lamps.turn`` action whose payload the same
parser reads as ``vllm_xargs`` (lamps_agent.hints; the struct is built in adapters/vllm)."""

from __future__ import annotations

from types import SimpleNamespace

from lamps_agent.hints import (
    KV_HINT_ACTION_TYPE,
    LampsHints,
    envelope_payload,
)
from lamps_agent.request import KVStrategy

HINTS = LampsHints(session_id="s", priority=3, agent="coder", step=2, output_tokens=40,
                   tool="search", tool_duration=1.5, kv_strategy=KVStrategy.PRESERVE,
                   tenant="acme")  # fmt: skip


def test_the_action_round_trips_through_the_xargs_parser() -> None:
    action = HINTS.to_kv_hint_action("a1")
    assert action["action_type"] == KV_HINT_ACTION_TYPE and action["action_id"] == "a1"
    envelope = {"protocol_version": "1", "message_id": "m", "actions": [action]}
    payload = envelope_payload(envelope)
    assert payload is not None and LampsHints.from_xargs(payload) == HINTS
    # the msgspec struct's attributes read the same as its JSON form
    struct = SimpleNamespace(actions=[SimpleNamespace(**action)])
    assert envelope_payload(struct) == payload


def test_other_actions_versions_and_non_envelopes_carry_none() -> None:
    other = {"action_id": "x", "action_type": "dynamo.retain", "action_version": "1",
             "payload": {"ttl_s": 5}}  # fmt: skip
    assert envelope_payload({"actions": [other]}) is None
    newer = {**HINTS.to_kv_hint_action(), "action_version": "99"}
    assert envelope_payload({"actions": [newer]}) is None
    broken = {**HINTS.to_kv_hint_action(), "payload": "not a dict"}
    assert envelope_payload({"actions": [broken]}) is None
    for value in (None, 7, "envelope", {"actions": "x"}, SimpleNamespace()):
        assert envelope_payload(value) is None
    # a lamps action after another component's is found
    mixed = {"actions": [other, HINTS.to_kv_hint_action()]}
    assert envelope_payload(mixed) == HINTS.to_xargs()
