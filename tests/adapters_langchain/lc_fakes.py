"""Fakes for the LangChain adapter tests: the packaged scripted chat models
(``adapters.langchain.testing``) under the names the tests use, and an in-memory tool registry
implementing the adapter's ``ToolRecorder`` protocol.  Imported by the test modules after their
``pytest.importorskip("langchain")``."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import HumanMessage

from adapters.langchain.testing import PlainScriptedChatModel as PlainChatModel
from adapters.langchain.testing import Script, tool_rounds
from adapters.langchain.testing import ScriptedChatModel as RecordingChatModel
from lamps_agent.predictors.base import DurationEstimate

__all__ = [
    "MODES",
    "FakeRegistry",
    "FakeTurnRegistry",
    "Mode",
    "PlainChatModel",
    "RecordingChatModel",
    "Script",
    "run_agent",
    "tool_rounds",
]


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
