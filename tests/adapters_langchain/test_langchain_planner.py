"""HintPlanner internals that the middleware tests reach only indirectly."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402

from adapters.langchain.planner import (  # noqa: E402
    HintPlanner,
    _ToolGuesser,
    estimate_tokens,
    output_token_count,
)
from lamps_agent.request import KVStrategy  # noqa: E402
from lamps_agent.strategy import choose_strategy  # noqa: E402


@pytest.mark.parametrize("context", [1.0, 500.0, 4_000.0, 100_000.0])
def test_no_wait_means_preserve_under_the_core_rule(context: float) -> None:
    # the planner skips the rule when no tool call is predicted; this is why that is exact
    assert choose_strategy(context_tokens=context, tool_duration=0.0) is KVStrategy.PRESERVE


def test_guesser_follows_the_most_frequent_tool() -> None:
    guesser = _ToolGuesser()
    assert guesser.guess("a", 0) is None
    guesser.observe("a", 0, "search")
    guesser.observe("a", 0, None)
    assert guesser.guess("a", 0) == "search"  # ties keep the first seen
    guesser.observe("a", 0, None)
    assert guesser.guess("a", 0) is None
    assert guesser.guess("a", 5) == "search"  # unseen step: the agent's favourite tool
    assert guesser.guess("b", 0) is None


def test_prompt_is_measured_incrementally_and_exactly() -> None:
    planner = HintPlanner(agent="p")
    call = {"name": "add", "args": {"a": 1}, "id": "c1"}
    messages = [SystemMessage("s" * 40), HumanMessage("h" * 400, id="h1")]
    first = planner.plan("s1", messages)
    messages += [
        AIMessage(content="", tool_calls=[call], id="a1"),
        ToolMessage("2", tool_call_id="c1"),
    ]
    second = planner.plan("s1", messages)
    assert first.prompt_tokens == estimate_tokens(messages[:2])
    assert second.prompt_tokens == estimate_tokens(messages)
    assert (first.step, second.step) == (0, 1)
    edited = [messages[0], HumanMessage("x" * 4, id="h2")]  # not a continuation: measured afresh
    assert planner.plan("s1", edited).prompt_tokens == estimate_tokens(edited)


def test_output_tokens_prefer_the_usage_report() -> None:
    reply = AIMessage(
        content="x" * 400,
        usage_metadata={"input_tokens": 1, "output_tokens": 9, "total_tokens": 10},
    )
    assert output_token_count(reply) == 9
    assert output_token_count(AIMessage(content="x" * 400)) == 100
    assert output_token_count(AIMessage(content="")) == 1


def test_session_ids() -> None:
    planner = HintPlanner()
    assert planner.session_id("thread-9", []) == "thread-9"
    assert planner.session_id(None, [SystemMessage("s"), HumanMessage("q", id="m1")]) == "lc-m1"
    by_text = planner.session_id(None, [HumanMessage("same question")])
    assert by_text == planner.session_id(None, [HumanMessage("same question")])
    assert by_text.startswith("lc-") and by_text != planner.session_id(
        None, [HumanMessage("other")]
    )
    assert planner.session_id(None, []) != planner.session_id(None, [])  # fresh each time
