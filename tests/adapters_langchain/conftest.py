"""Fakes for the LangChain adapter tests: a scripted chat model that records what it was sent,
and an in-memory tool registry implementing the adapter's ``ToolRecorder`` protocol."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("langchain")

from langchain_core.callbacks import CallbackManagerForLLMRun  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from pydantic import Field  # noqa: E402

from lamps_agent.predictors.base import DurationEstimate  # noqa: E402

Script = Callable[[list[BaseMessage]], AIMessage]


class RecordingChatModel(GenericFakeChatModel):
    """Replies with ``script(messages)``; keeps every call's kwargs.  Has an ``extra_body`` field
    like ``ChatOpenAI``, so the middleware's ``auto`` transport sends hints to it."""

    script: Script
    messages: Any = Field(default_factory=lambda: iter(()))
    extra_body: dict[str, Any] | None = None
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
        return DurationEstimate(mean=value, p50=value, p90=value, p99=value, count=0, confidence=0.0)

    def by_tool(self, tool: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["tool"] == tool]


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(hints={"slow": 2.0, "add": 0.01})
