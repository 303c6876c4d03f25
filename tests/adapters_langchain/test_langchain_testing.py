"""``adapters.langchain.testing``: the packaged scripted chat model works inside ``create_agent``
(tools bound as ChatOpenAI binds them, hints captured), and a model that cannot carry hints is
named in one warning."""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from adapters.langchain import LampsMiddleware, wrap  # noqa: E402
from adapters.langchain.testing import (  # noqa: E402
    PlainScriptedChatModel,
    ScriptedChatModel,
    replies,
    tool_rounds,
)
from lamps_agent.request import KVStrategy  # noqa: E402


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def test_generic_fake_model_cannot_bind_tools() -> None:
    """Why the package ships its own: LangChain's fake model fails inside create_agent."""
    with pytest.raises(NotImplementedError):
        create_agent(GenericFakeChatModel(messages=iter(())), [lookup]).invoke(
            {"messages": [HumanMessage("x")]}
        )


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_scripted_model_drives_an_agent_and_captures_the_hints(mode: str) -> None:
    model = ScriptedChatModel(
        script=tool_rounds([("lookup", {"key": "a"})], [("lookup", {"key": "b"})]),
        extra_body={"top_k": 4},
    )
    agent = create_agent(model, [lookup], middleware=[LampsMiddleware(agent="offline")])
    inputs = {"messages": [HumanMessage("find a and b")]}
    config: Any = {"configurable": {"thread_id": "t1"}}
    if mode == "invoke":
        state = agent.invoke(inputs, config)
    else:
        state = list(agent.stream(inputs, config, stream_mode="values"))[-1]
    assert state["messages"][-1].content == "done: ['value of a', 'value of b']"
    assert len(model.calls) == 3
    assert model.calls[0]["tools"][0]["function"]["name"] == "lookup"  # bound as ChatOpenAI does
    hints = model.hints()
    assert [(h.session_id, h.agent, h.step) for h in hints] == [
        ("t1", "offline", 0),
        ("t1", "offline", 1),
        ("t1", "offline", 2),
    ]
    assert hints[1].last_tool == "lookup" and isinstance(hints[1].kv_strategy, KVStrategy)
    assert model.last_body is not None and model.last_body["top_k"] == 4


def test_tool_choice_reaches_the_call() -> None:
    model = ScriptedChatModel(script=replies("hi"))
    model.bind_tools([lookup], tool_choice="required").invoke([HumanMessage("x")])
    assert model.calls[0]["tool_choice"] == "required"


def test_replies_script_and_its_validation() -> None:
    model = ScriptedChatModel(script=replies("one", AIMessage(content="two")))
    assert [model.invoke([HumanMessage("x")]).content for _ in range(1)] == ["one"]
    convo = [HumanMessage("x"), AIMessage(content="one"), HumanMessage("y")]
    assert model.invoke(convo).content == "two"
    assert model.invoke([*convo, AIMessage(content="two"), HumanMessage("z")]).content == "two"
    with pytest.raises(ValueError):
        replies()
    with pytest.raises(TypeError, match="AIMessage"):
        ScriptedChatModel(script=lambda m: "text").invoke([HumanMessage("x")])  # type: ignore[arg-type, return-value]


def test_a_model_without_extra_body_gets_no_hints_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoBody(PlainScriptedChatModel):  # a fresh class: the warning is once per class
        pass

    model = NoBody(script=tool_rounds([("lookup", {"key": "a"})]))
    caplog.set_level(logging.WARNING, logger="adapters.langchain.middleware")
    for i in range(2):
        agent = create_agent(model, [lookup], middleware=[LampsMiddleware()])
        agent.invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": f"t{i}"}})
    wrap(model).invoke([HumanMessage("y")])
    assert model.hints() == [] and len(model.calls) == 5
    warnings = [r for r in caplog.records if "no extra_body" in r.getMessage()]
    assert len(warnings) == 1 and "NoBody" in warnings[0].getMessage()


def test_transport_none_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    class Quiet(PlainScriptedChatModel):
        pass

    caplog.set_level(logging.WARNING, logger="adapters.langchain.middleware")
    agent = create_agent(
        Quiet(script=replies("ok")), [lookup], middleware=[LampsMiddleware(transport="none")]
    )
    agent.invoke({"messages": [HumanMessage("x")]})
    assert not [r for r in caplog.records if "no extra_body" in r.getMessage()]
