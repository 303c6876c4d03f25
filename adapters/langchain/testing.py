"""Offline chat models for trying the middleware (and testing agents) without an inference server.

LangChain's own ``GenericFakeChatModel`` cannot be used with ``create_agent``: its ``bind_tools``
raises ``NotImplementedError``.  :class:`ScriptedChatModel` can: each reply is computed by a
script from the conversation so far (text, or tool calls the agent then really runs), tools bind
the way ``ChatOpenAI`` binds them, and every call's keyword arguments are kept, so the hints
:class:`~adapters.langchain.LampsMiddleware` sent are there to inspect::

    from adapters.langchain import LampsMiddleware
    from adapters.langchain.testing import ScriptedChatModel, tool_rounds

    model = ScriptedChatModel(script=tool_rounds([("search", {"query": "vLLM"})]))
    agent = create_agent(model, [search], middleware=[LampsMiddleware(agent="qa")])
    agent.invoke({"messages": [("user", "...")]}, {"configurable": {"thread_id": "t1"}})
    model.hints()          # one LampsHints per model call, as a vLLM server would receive them

:class:`ScriptedChatModel` has an ``extra_body`` field like ``ChatOpenAI``, so the middleware's
default ``transport="auto"`` sends it hints; :class:`PlainScriptedChatModel` has none and stands
for a provider whose API takes no extra fields.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from lamps_agent.hints import LampsHints

Script = Callable[[list[BaseMessage]], AIMessage]
ToolCallSpec = tuple[str, dict[str, Any]]

__all__ = [
    "PlainScriptedChatModel",
    "Script",
    "ScriptedChatModel",
    "replies",
    "tool_rounds",
]


class _ScriptedBase(BaseChatModel):
    """What both scripted models share: the script, the call log, tool binding and streaming."""

    script: Script
    calls: list[dict[str, Any]] = Field(default_factory=list)
    """Each call's keyword arguments (``tools``, ``tool_choice``, ``extra_body``, ...), in order."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "lamps-scripted"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools in OpenAI's format, as ``ChatOpenAI`` does; the script decides the calls."""
        bound: dict[str, Any] = {"tools": [convert_to_openai_tool(t) for t in tools], **kwargs}
        if tool_choice is not None:
            bound["tool_choice"] = tool_choice
        return self.bind(**bound)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:  # an agent may call the model from several threads
            self.calls.append(kwargs)
        reply = self.script(list(messages))
        if not isinstance(reply, AIMessage):
            raise TypeError(f"the script must return an AIMessage, got {type(reply).__name__}")
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The whole reply as one chunk, tool calls included."""
        reply = self._generate(messages, stop, run_manager, **kwargs).generations[0].message
        assert isinstance(reply, AIMessage)
        chunks = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(reply.tool_calls)
        ]
        chunk = AIMessageChunk(
            content=reply.content,
            tool_call_chunks=chunks,
            usage_metadata=reply.usage_metadata,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=chunk)

    @property
    def last_body(self) -> dict[str, Any] | None:
        """The ``extra_body`` of the last call (``None`` before the first, or if none was sent)."""
        with self._lock:
            return self.calls[-1].get("extra_body") if self.calls else None

    def hints(self) -> list[LampsHints]:
        """The hints of every call that carried some, in order (parsed as the engine parses them)."""
        with self._lock:
            bodies = [c["extra_body"] for c in self.calls if c.get("extra_body")]
        return [LampsHints.from_body(body) for body in bodies]


class ScriptedChatModel(_ScriptedBase):
    """A scripted chat model with an ``extra_body`` field like ``ChatOpenAI``: hints reach it.

    Args:
        script: ``(messages) -> AIMessage``, the reply to the conversation so far
            (:func:`tool_rounds` and :func:`replies` build common ones).
        extra_body: the model's own extra body, merged under the hints as ``ChatOpenAI``'s is.
    """

    extra_body: dict[str, Any] | None = None


class PlainScriptedChatModel(_ScriptedBase):
    """A scripted chat model without ``extra_body``: the middleware's ``auto`` transport sends it
    no hints (and says so once in the log)."""


def tool_rounds(*rounds: Sequence[ToolCallSpec], final: str = "done") -> Script:
    """A script calling the tools of ``rounds[k]`` (in parallel) at model turn k, then answering
    ``"{final}: [tool results]"``.  Each round is a list of ``(tool name, arguments)``."""

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


def replies(*messages: AIMessage | str) -> Script:
    """A script answering model turn k with ``messages[k]`` (a string is a plain text reply); past
    the end it repeats the last one."""
    if not messages:
        raise ValueError("replies() needs at least one message")
    fixed = [AIMessage(content=m) if isinstance(m, str) else m for m in messages]

    def script(conversation: list[BaseMessage]) -> AIMessage:
        turn = sum(1 for m in conversation if isinstance(m, AIMessage))
        return fixed[min(turn, len(fixed) - 1)].model_copy()

    return script
