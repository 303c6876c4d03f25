"""Fakes for the LangChain adapter tests: a scripted chat model that records what it was sent,
and an in-memory tool registry implementing the adapter's ``ToolRecorder`` protocol.  Imported by
the test modules after their ``pytest.importorskip("langchain")``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from lamps_agent.predictors.base import DurationEstimate

Script = Callable[[list[BaseMessage]], AIMessage]


class PlainChatModel(GenericFakeChatModel):
    """Replies with ``script(messages)``; keeps every call's kwargs (no ``extra_body`` field)."""

    script: Script
    messages: Any = Field(default_factory=lambda: iter(()))
    calls: list[dict[str, Any]] = Field(default_factory=list)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(kwargs)
        return ChatResult(generations=[ChatGeneration(message=self.script(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """One chunk with the whole reply (the base fake cannot stream tool calls)."""
        reply = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
        assert isinstance(reply, AIMessage)
        chunks = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
            for i, c in enumerate(reply.tool_calls)
        ]
        message = AIMessageChunk(
            content=reply.content, tool_call_chunks=chunks, chunk_position="last"
        )
        yield ChatGenerationChunk(message=message)


class RecordingChatModel(PlainChatModel):
    """Has an ``extra_body`` field like ``ChatOpenAI``: the ``auto`` transport sends it hints."""

    extra_body: dict[str, Any] | None = None


def tool_rounds(*rounds: list[tuple[str, dict[str, Any]]], final: str = "done") -> Script:
    """A script calling the tools of ``rounds[k]`` (in parallel) at turn k, then answering."""

    def script(messages: list[BaseMessage]) -> AIMessage:
        turn = sum(1 for m in messages if isinstance(m, AIMessage))
        if turn < len(rounds):
            calls = [
                {"name": name, "args": args, "id": f"call-{turn}-{i}", "type": "tool_call"}
                for i, (name, args) in enumerate(rounds[turn])
            ]
            return AIMessage(content="", tool_calls=calls)
        seen = [m.content for m in messages if isinstance(m, ToolMessage)]
        return AIMessage(content=f"{final}: {seen}")

    return script


@dataclass
class FakeRegistry:
    """An in-memory ``ToolRecorder``: keeps every record, estimates from a fixed hint table."""

    hints: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, tool: str, *, duration: float, **fields: Any) -> None:
        with self.lock:
            self.records.append({"tool": tool, "duration": duration, **fields})

    def estimate(self, tool: str) -> DurationEstimate:
        value = self.hints.get(tool, 5.0)
        return DurationEstimate(
            mean=value, p50=value, p90=value, p99=value, count=0, confidence=0.0
        )

    def by_tool(self, tool: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["tool"] == tool]


@dataclass
class FakeTurnRegistry(FakeRegistry):
    """A :class:`FakeRegistry` that also keeps model turns (the optional ``TurnRecorder``)."""

    turns: list[dict[str, Any]] = field(default_factory=list)

    def record_turn(self, **fields: Any) -> None:
        with self.lock:
            self.turns.append(fields)


Mode = Literal["invoke", "ainvoke", "stream", "astream", "stream_tokens"]
MODES: tuple[Mode, ...] = ("invoke", "ainvoke", "stream", "astream", "stream_tokens")


def run_agent(agent: Any, text: str, *, mode: Mode, thread_id: str | None = None) -> dict[str, Any]:
    """Run ``agent`` on one user message the way ``mode`` says; returns the final state.
    ``stream_tokens`` streams messages token by token (the model's ``_stream`` is used)."""
    inputs = {"messages": [HumanMessage(text)]}
    config: Any = {"configurable": {"thread_id": thread_id}} if thread_id else None
    if mode == "invoke":
        return dict(agent.invoke(inputs, config))
    if mode == "ainvoke":
        return dict(asyncio.run(agent.ainvoke(inputs, config)))
    if mode == "stream":
        return dict(list(agent.stream(inputs, config, stream_mode="values"))[-1])
    if mode == "stream_tokens":  # token streaming: the model is called through its _stream
        parts = list(agent.stream(inputs, config, stream_mode=["messages", "values"]))
        return dict(next(chunk for kind, chunk in reversed(parts) if kind == "values"))

    async def consume() -> dict[str, Any]:
        states = [s async for s in agent.astream(inputs, config, stream_mode="values")]
        return dict(states[-1])

    return asyncio.run(consume())
