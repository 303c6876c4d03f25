"""LangChain agents with ``LampsMiddleware`` against a served engine, as the end-to-end tests run
them (one ``lamps-agent serve``, or a ``lamps-agent cluster`` behind its router).

A random-weight model never chooses a tool by itself, so :class:`ToolChoiceDriver` asks for one
with ``tool_choice="required"`` (vLLM's guided decoding writes the call) for the first turns and
for a plain answer (``"none"``) at the end.

This module imports LangChain: a test module imports it after its
``pytest.importorskip("langchain")`` (the conftest itself must import without the extra).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI

from tests.adapters_vllm.conftest import BLOCK

TOOL_TURNS = 3  # tool-calling turns per conversation, then a plain answer
CONVERSATIONS = 4
MAX_TOKENS = 64  # a required call is ~45 tokens of JSON on this tokenizer
TOOL_SECONDS = 0.3
SYSTEM_PROMPT = "You answer questions about the catalogue with its tools. " * 8
# vLLM options of every served engine here (after `--`): the tiny model's small KV cache, and
# the cached prompt tokens in each reply's usage (the tests check prefix reuse with them).
ENGINE_ARGS = (
    "--enforce-eager", "--block-size", str(BLOCK), "--max-model-len", "2048",
    "--kv-cache-memory-bytes", str(4 * 2**20), "--max-num-seqs", "8",
    "--enable-prompt-tokens-details",
)  # fmt: skip


class ToolChoiceDriver(AgentMiddleware[Any, Any, Any]):
    """Forces a tool call (vLLM's guided decoding picks tool and arguments) for the first
    ``turns`` model calls of a conversation, then a plain answer."""

    def __init__(self, turns: int) -> None:
        super().__init__()
        self.turns = turns

    def _steer(self, request: ModelRequest[Any]) -> ModelRequest[Any]:
        done = sum(1 for m in request.messages if isinstance(m, AIMessage))
        if done < self.turns:
            settings = {**request.model_settings, "parallel_tool_calls": False}
            return request.override(tool_choice="required", model_settings=settings)
        return request.override(tool_choice="none")

    def wrap_model_call(self, request: ModelRequest[Any], handler: Callable[..., Any]) -> Any:
        return handler(self._steer(request))

    async def awrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[..., Awaitable[Any]]
    ) -> Any:
        return await handler(self._steer(request))


def catalogue_agent(url: str, model: str, tools: Sequence[Any], lamps: AgentMiddleware) -> Any:
    """An agent on the engine at ``url`` (its OpenAI API under ``/v1``): ``TOOL_TURNS`` tool
    calls, then an answer; ``lamps`` (the middleware under test) sends the hints.  A failed
    model call is not retried: it fails the conversation."""
    chat = ChatOpenAI(
        base_url=f"{url}/v1",
        api_key="EMPTY",  # type: ignore[arg-type]
        model=model,
        max_tokens=MAX_TOKENS,
        temperature=0,
        max_retries=0,
        timeout=120,
    )
    return create_agent(
        chat,
        list(tools),
        system_prompt=SYSTEM_PROMPT,
        middleware=[ToolChoiceDriver(TOOL_TURNS), lamps],
    )


async def run_conversations(agent: Any, threads: list[str]) -> list[dict[str, Any]]:
    """One conversation per thread id, all at once (``ainvoke``)."""
    return await asyncio.gather(
        *(
            agent.ainvoke(
                {"messages": [HumanMessage(f"Question {i}: what does the catalogue say?")]},
                {"configurable": {"thread_id": thread}},
            )
            for i, thread in enumerate(threads)
        )
    )


def replies(state: dict[str, Any]) -> list[AIMessage]:
    """A finished conversation's model replies, checked: one tool call in each of the first
    ``TOOL_TURNS``, then a plain answer."""
    found = [m for m in state["messages"] if isinstance(m, AIMessage)]
    assert len(found) == TOOL_TURNS + 1
    assert all(len(r.tool_calls) == 1 for r in found[:TOOL_TURNS])
    assert not found[-1].tool_calls
    return found


def stats_after(path: Path) -> dict[str, Any]:
    """The plug-in's statistics as of now: its housekeeping thread writes them every 2 s while
    the engine is idle (the file's modification time says when)."""
    since = time.time()
    deadline = since + 30
    while time.time() < deadline:
        if path.exists() and path.stat().st_mtime > since:
            return dict(json.loads(path.read_text()))
        time.sleep(0.2)
    pytest.fail(f"the plug-in wrote no statistics to {path} within 30 s")
