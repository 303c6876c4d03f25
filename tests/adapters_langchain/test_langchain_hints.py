"""The hint wire format: round trips, validation, and merging into the user's request body."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from adapters.langchain.hints import (  # noqa: E402
    HINT_VERSION,
    XARGS_PREFIX,
    HintError,
    LampsHints,
    merge_extra_body,
)
from lamps_agent.request import KVStrategy  # noqa: E402


def sample(**overrides: Any) -> LampsHints:
    fields: dict[str, Any] = {
        "session_id": "thread-7",
        "priority": 42,
        "agent": "math",
        "step": 2,
        "output_tokens": 31,
        "tool": "calculator",
        "tool_duration": 0.25,
        "kv_strategy": KVStrategy.SWAP,
        "last_tool": "search",
        "last_tool_duration": 1.5,
    }
    return LampsHints(**{**fields, **overrides})


def test_body_round_trip() -> None:
    hints = sample()
    body = hints.to_body()
    assert body["priority"] == 42 and body["session_id"] == "thread-7"
    assert LampsHints.from_body(body) == hints


def test_a_tenant_round_trips_and_is_checked() -> None:
    hints = sample(tenant="acme")
    assert hints.to_xargs()["lamps_tenant"] == "acme"
    assert LampsHints.from_body(hints.to_body()) == hints
    assert "lamps_tenant" not in sample().to_xargs()
    with pytest.raises(HintError, match="tenant"):
        sample(tenant="")
    with pytest.raises(HintError, match="tenant is longer"):
        sample(tenant="x" * 10_000)


def test_xargs_are_flat_prefixed_and_versioned() -> None:
    xargs = sample().to_xargs()
    assert xargs["lamps_hint_version"] == HINT_VERSION == 1
    assert all(key.startswith(XARGS_PREFIX) for key in xargs)
    assert all(type(v) in (str, int, float) for v in xargs.values())
    assert xargs["lamps_kv_strategy"] == "swap"
    assert xargs["lamps_tool_duration"] == 0.25


def test_no_tool_predicted_travels_as_empty_string() -> None:
    hints = sample(tool=None, tool_duration=0.0, last_tool=None, last_tool_duration=None)
    xargs = hints.to_xargs()
    assert xargs["lamps_tool"] == ""
    assert "lamps_last_tool" not in xargs
    assert LampsHints.from_xargs(xargs) == hints


def test_request_fields_win_over_their_xargs_copies() -> None:
    body = sample().to_body()
    body["priority"], body["session_id"] = 3, "other"
    parsed = LampsHints.from_body(body)
    assert (parsed.priority, parsed.session_id) == (3, "other")


def test_ints_accepted_for_float_fields() -> None:
    xargs = sample().to_xargs()
    xargs["lamps_tool_duration"] = 2
    assert LampsHints.from_xargs(xargs).tool_duration == 2.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"session_id": ""},
        {"session_id": "x" * 300},
        {"priority": 2**40},
        {"priority": True},
        {"step": -1},
        {"output_tokens": 0},
        {"tool_duration": -0.1},
        {"tool_duration": float("nan")},
        {"tool": None},  # a duration without a tool
        {"kv_strategy": "swap"},
        {"last_tool_duration": None},
        {"agent": ""},
        {"version": 2},
    ],
)
def test_invalid_hints_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(HintError):
        sample(**overrides)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lamps_hint_version", 2),
        ("lamps_kv_strategy", "keep"),
        ("lamps_step", "2"),
        ("lamps_output_tokens", 3.5),
        ("lamps_tool_duration", "fast"),
    ],
)
def test_invalid_xargs_are_refused(key: str, value: Any) -> None:
    xargs: dict[str, Any] = dict(sample().to_xargs())
    xargs[key] = value
    with pytest.raises(HintError):
        LampsHints.from_xargs(xargs)


def test_missing_hints_are_reported() -> None:
    with pytest.raises(HintError, match="no lamps hints"):
        LampsHints.from_xargs({"other": 1})
    with pytest.raises(HintError, match="vllm_xargs"):
        LampsHints.from_body({"priority": 1})
    xargs = dict(sample().to_xargs())
    del xargs["lamps_agent"]
    with pytest.raises(HintError, match="lamps_agent"):
        LampsHints.from_xargs(xargs)


@pytest.mark.parametrize(
    "key",
    ["lamps_session_id", "lamps_priority", "lamps_agent", "lamps_step", "lamps_output_tokens",
     "lamps_tool", "lamps_kv_strategy"],
)  # fmt: skip
def test_every_missing_key_is_a_hint_error(key: str) -> None:
    """A reader catches HintError alone; a missing kv_strategy once escaped as a KeyError."""
    xargs = dict(sample().to_xargs())
    del xargs[key]
    with pytest.raises(HintError, match=key):
        LampsHints.from_xargs(xargs)


def test_unknown_keys_are_ignored() -> None:
    xargs: dict[str, Any] = {**sample().to_xargs(), "lamps_future_field": 1, "user_key": "x"}
    assert LampsHints.from_xargs(xargs) == sample()


def test_hints_are_frozen() -> None:
    with pytest.raises(AttributeError):
        sample().step = 3  # type: ignore[misc]
    assert replace(sample(), step=5).step == 5


def test_merge_keeps_user_keys_and_lets_them_win() -> None:
    ours = sample().to_body()
    model = {"top_k": 5, "priority": 7, "vllm_xargs": {"user_a": "a", "lamps_agent": "mine"}}
    call = {"repetition_penalty": 1.1, "vllm_xargs": {"user_b": 2}}
    merged = merge_extra_body(ours, model, call)
    assert merged["top_k"] == 5 and merged["repetition_penalty"] == 1.1
    assert merged["priority"] == 7  # the user's own value wins
    assert merged["session_id"] == "thread-7"
    xargs = merged["vllm_xargs"]
    assert xargs["user_a"] == "a" and xargs["user_b"] == 2
    assert xargs["lamps_agent"] == "mine"
    assert xargs["lamps_step"] == 2
    assert model["vllm_xargs"] == {"user_a": "a", "lamps_agent": "mine"}  # inputs untouched


def test_merge_skips_empty_layers() -> None:
    assert merge_extra_body(None, {}, {"a": 1}) == {"a": 1}
