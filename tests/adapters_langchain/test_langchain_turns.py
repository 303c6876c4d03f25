"""Model turns recorded by the middleware: agent, step, the tool the reply called, output and
prompt tokens, session; the prompt's tail only with ``record_prompts=True``."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from lc_fakes import (  # noqa: E402
    MODES,
    FakeRegistry,
    FakeTurnRegistry,
    Mode,
    PlainChatModel,
    RecordingChatModel,
    run_agent,
    tool_rounds,
)

from adapters.langchain import LampsMiddleware, TurnRecorder, wrap  # noqa: E402
from adapters.langchain.planner import PROMPT_TEXT_CHARS, output_token_count  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


TWO_ROUNDS = tool_rounds([("add", {"a": 1, "b": 2})], [("mul", {"a": 3, "b": 4}), ("add", {})])


def run(
    script: Any, registry: FakeRegistry, *, mode: Mode = "invoke", text: str = "x", **kw: Any
) -> tuple[dict[str, Any], LampsMiddleware]:
    middleware = LampsMiddleware(registry=registry, agent="calc", transport="none", **kw)
    agent = create_agent(RecordingChatModel(script=script), [add, mul], middleware=[middleware])
    return run_agent(agent, text, mode=mode, thread_id="t-1"), middleware


@pytest.mark.parametrize("mode", MODES)
def test_every_model_turn_is_recorded_without_prompt_text(mode: Mode) -> None:
    registry = FakeTurnRegistry()
    state, middleware = run(TWO_ROUNDS, registry, mode=mode)
    assert middleware.planner.turns is registry and isinstance(registry, TurnRecorder)
    replies = [m for m in state["messages"] if isinstance(m, AIMessage)]
    turns = registry.turns
    assert [(t["agent"], t["step"], t["tool"]) for t in turns] == [
        ("calc", 0, "add"),
        ("calc", 1, "mul"),  # the first tool the reply called
        ("calc", 2, None),  # the final answer
    ]
    assert all(t["session_id"] == "t-1" and t["prompt_text"] is None for t in turns)
    assert [t["output_tokens"] for t in turns] == [output_token_count(r) for r in replies]
    assert all(t["prompt_tokens"] >= 0 for t in turns)
    assert turns[2]["prompt_tokens"] > turns[0]["prompt_tokens"]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_prompt_text_is_recorded_on_opt_in_and_truncated(mode: Mode) -> None:
    registry = FakeTurnRegistry()
    text = "please add these numbers " + "z" * 5_000
    state, _ = run(TWO_ROUNDS, registry, mode=mode, text=text, record_prompts=True)
    first, _, last = registry.turns
    assert first["prompt_text"] == ("human: " + text)[-PROMPT_TEXT_CHARS:]
    # the final turn's prompt ends with the tool results, one "type: content" line per message
    assert len(last["prompt_text"]) == PROMPT_TEXT_CHARS
    assert "\ntool: 12\n" in last["prompt_text"]
    assert last["prompt_text"].endswith("tool: " + str(state["messages"][-2].content))


def test_usage_metadata_gives_the_token_counts() -> None:
    def script(messages: list[BaseMessage]) -> AIMessage:
        usage = {"input_tokens": 321, "output_tokens": 42, "total_tokens": 363}
        return AIMessage(content="short", usage_metadata=usage)  # type: ignore[arg-type]

    registry = FakeTurnRegistry()
    run(script, registry)
    (turn,) = registry.turns
    assert (turn["output_tokens"], turn["prompt_tokens"], turn["tool"]) == (42, 321, None)


def test_a_registry_without_record_turn_still_records_calls() -> None:
    registry = FakeRegistry()
    _, middleware = run(TWO_ROUNDS, registry)
    assert middleware.planner.turns is None
    assert [r["tool"] for r in registry.records].count("add") == 2


def test_a_failing_record_turn_does_not_break_the_agent() -> None:
    class Broken(FakeTurnRegistry):
        def record_turn(self, **fields: Any) -> None:
            raise RuntimeError("database down")

    state, _ = run(TWO_ROUNDS, Broken())
    assert state["messages"][-1].content.startswith("done")


@pytest.mark.parametrize("record_prompts", [False, True])
def test_a_wrapped_chat_model_records_its_turns(record_prompts: bool) -> None:
    registry = FakeTurnRegistry()
    llm = wrap(
        PlainChatModel(script=TWO_ROUNDS),
        registry=registry,
        agent="plain",
        record_prompts=record_prompts,
    )
    llm.invoke([HumanMessage("hi there")])
    (turn,) = registry.turns
    assert (turn["agent"], turn["step"], turn["tool"]) == ("plain", 0, "add")
    assert turn["prompt_text"] == ("human: hi there" if record_prompts else None)
