"""``wrap(llm)``: hints from a chat model used outside create_agent (a custom LangGraph graph, a
plain loop), in every calling mode."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from langchain_core.runnables import RunnableBinding  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.graph import START, MessagesState, StateGraph  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402
from lc_fakes import FakeRegistry, RecordingChatModel, tool_rounds  # noqa: E402
from pydantic import Field  # noqa: E402

from adapters.langchain import LampsChatModel, LampsHints, LampsMiddleware, wrap  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def custom_graph(llm: Any) -> Any:
    bound = llm.bind_tools([add])

    def think(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("think", think)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "think")
    graph.add_conditional_edges("think", tools_condition)
    graph.add_edge("tools", "think")
    return graph.compile()


def test_custom_graph_sends_hints_with_the_thread_id() -> None:
    inner = RecordingChatModel(
        script=tool_rounds([("add", {"a": 2, "b": 2})]), extra_body={"top_k": 3}
    )
    llm = wrap(inner, registry=FakeRegistry(), agent="graph")
    app = custom_graph(llm)
    state = app.invoke({"messages": [HumanMessage("2+2?")]}, {"configurable": {"thread_id": "g1"}})
    assert "'4'" in state["messages"][-1].content
    hints = [LampsHints.from_body(c["extra_body"]) for c in inner.calls]
    assert [(h.session_id, h.agent, h.step) for h in hints] == [
        ("g1", "graph", 0),
        ("g1", "graph", 1),
    ]
    assert all(c["extra_body"]["top_k"] == 3 for c in inner.calls)


def test_bind_tools_and_bind_keep_the_wrapper_and_the_users_body() -> None:
    inner = RecordingChatModel(script=tool_rounds())
    llm = wrap(inner)
    bound = llm.bind_tools([add]).bind(extra_body={"vllm_xargs": {"mine": 1}, "seed": 4})
    assert isinstance(bound, RunnableBinding) and bound.bound is llm
    bound.invoke([HumanMessage("hi")])
    body = inner.calls[0]["extra_body"]
    assert body["seed"] == 4 and body["vllm_xargs"]["mine"] == 1
    assert body["vllm_xargs"]["lamps_step"] == 0


def test_all_calling_modes_send_hints_and_learn() -> None:
    inner = RecordingChatModel(script=lambda messages: AIMessage(content="a b c d e f g h"))
    llm = wrap(inner)
    messages = [HumanMessage("hello")]
    llm.invoke(messages)
    asyncio.run(llm.ainvoke(messages))
    chunks = list(llm.stream(messages))
    assert "".join(str(c.content) for c in chunks) == "a b c d e f g h"

    async def consume() -> None:
        async for _ in llm.astream(messages):
            pass

    asyncio.run(consume())
    hints = [LampsHints.from_body(c["extra_body"]) for c in inner.calls]
    assert len(hints) == 4
    assert hints[0].output_tokens == 128  # default before anything was seen
    assert all(h.output_tokens == 4 for h in hints[1:])  # learned: "a b c d e f g h" ~ 4 tokens


class NoStream(BaseChatModel):
    """A chat model without streaming support (BaseChatModel's ``_stream`` left alone)."""

    extra_body: dict[str, Any] | None = None
    calls: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "no-stream"

    def _generate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Any:
        self.calls.append(kwargs)
        call = {"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))]
        )


def test_a_model_that_cannot_stream_still_streams_through_the_wrapper() -> None:
    inner = NoStream()
    chunks = list(wrap(inner).stream([HumanMessage("x")]))
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert "extra_body" in inner.calls[0]


def test_sharing_a_planner_with_the_middleware() -> None:
    middleware = LampsMiddleware(registry=FakeRegistry(), agent="shared")
    llm = wrap(RecordingChatModel(script=tool_rounds()), planner=middleware.planner)
    assert llm.planner is middleware.planner


def test_wrap_validates() -> None:
    with pytest.raises(TypeError):
        wrap(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        wrap(RecordingChatModel(script=tool_rounds()), transport="smoke")  # type: ignore[arg-type]
    assert isinstance(wrap(RecordingChatModel(script=tool_rounds())), LampsChatModel)


def test_structured_output_goes_through_the_wrapper() -> None:
    from pydantic import BaseModel

    class Sum(BaseModel):
        total: int

    def script(messages: Any) -> AIMessage:
        call = {"name": "Sum", "args": {"total": 4}, "id": "s1", "type": "tool_call"}
        return AIMessage(content="", tool_calls=[call])

    inner = RecordingChatModel(script=script)
    result = wrap(inner).with_structured_output(Sum).invoke([HumanMessage("2+2")])
    assert result == Sum(total=4)
    assert LampsHints.from_body(inner.calls[0]["extra_body"]).step == 0


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream", "bound"])
def test_a_plain_call_with_a_thread_id_uses_it_as_the_session(mode: str) -> None:
    inner = RecordingChatModel(script=lambda messages: AIMessage(content="ok"))
    llm = wrap(inner)
    config: Any = {"configurable": {"thread_id": "thread-7"}}
    messages = [HumanMessage("hello")]
    if mode == "invoke":
        llm.invoke(messages, config)
    elif mode == "ainvoke":
        asyncio.run(llm.ainvoke(messages, config))
    elif mode == "stream":
        list(llm.stream(messages, config))
    elif mode == "bound":
        llm.bind_tools([add]).invoke(messages, config)
    else:

        async def consume() -> None:
            async for _ in llm.astream(messages, config):
                pass

        asyncio.run(consume())
    assert LampsHints.from_body(inner.calls[0]["extra_body"]).session_id == "thread-7"


def test_the_thread_id_matches_the_middlewares_session() -> None:
    """A wrapped model and the middleware's tool handler put one thread in one session."""
    registry = FakeRegistry()
    middleware = LampsMiddleware(registry=registry, agent="shared")
    inner = RecordingChatModel(script=lambda messages: AIMessage(content="ok"))
    llm = wrap(inner, planner=middleware.planner)
    llm.invoke([HumanMessage("a")], {"configurable": {"thread_id": "t-1"}})
    llm.invoke([HumanMessage("b")], {"configurable": {"thread_id": "t-1"}})
    llm.invoke([HumanMessage("c")], {"metadata": {"lamps_session_id": "own"}})
    sessions = [h.session_id for h in inner.hints()]
    assert sessions == ["t-1", "t-1", "own"]
