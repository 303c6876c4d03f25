"""A model call cut off mid-answer (its replica died under a streamed turn) is called again by
LampsMiddleware: with a fake chat model that streams a few tokens and then breaks off, as the
OpenAI SDK does when the router's stream ends early.  Checked: the agent's turn completes with the
retry's reply only, the retry is counted, logged and announced on the ``custom`` stream, a UI on
the ``messages`` stream sees the cut attempt's tokens first; other failures and spent retries
raise; an OpenAI-compatible reply without a finish reason counts as cut; sync and async alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult  # noqa: E402

from adapters.langchain import LampsMiddleware  # noqa: E402
from adapters.langchain.retry import StreamCutError, check_complete, is_cut  # noqa: E402


class APIConnectionError(Exception):
    """Named as the OpenAI SDK's: the middleware matches the class by name."""


class DyingChatModel(BaseChatModel):
    """Streams ``answer`` word by word; the first ``cuts`` calls break off after two words
    (raising ``error``, or — with ``error=None`` — ending without a finish reason)."""

    answer: str = "the whole answer"
    cuts: int = 1
    error: str | None = "connection"
    calls: int = 0
    extra_body: dict[str, Any] | None = None

    @property
    def _llm_type(self) -> str:
        return "dying"

    def _chunks(self) -> Iterator[ChatGenerationChunk]:
        self.calls += 1
        cut = self.calls <= self.cuts
        words = self.answer.split()
        meta = {"model_provider": "openai"}
        for i, word in enumerate(words[:2] if cut else words):
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=("" if i == 0 else " ") + word, response_metadata=meta
                )
            )
        if cut and self.error == "connection":
            raise APIConnectionError("Connection error.")
        if cut and self.error == "value":
            raise ValueError("a bad request")
        if not cut:
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="", response_metadata={**meta, "finish_reason": "stop"}
                ),
                generation_info={"finish_reason": "stop"},
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks():
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(str(c.message.content) for c in self._chunks())
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def _agent(model: DyingChatModel, **kwargs: Any) -> tuple[Any, LampsMiddleware]:
    middleware = LampsMiddleware(transport="none", retry_delay_s=0, **kwargs)
    return create_agent(model=model, tools=[], middleware=[middleware]), middleware


def test_a_cut_streamed_turn_is_called_again_and_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = DyingChatModel()
    agent, middleware = _agent(model)
    shown: list[str] = []
    custom: list[Any] = []
    final: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, logger="adapters.langchain.retry"):
        for mode, data in agent.stream(
            {"messages": [("user", "hi")]}, stream_mode=["messages", "custom", "values"]
        ):
            if mode == "messages":
                shown.append(str(data[0].content))
            elif mode == "custom":
                custom.append(data)
            else:
                final = data
    assert model.calls == 2 and middleware.num_model_retries == 1
    assert (
        final["messages"][-1].content == "the whole answer"
    )  # the cut attempt is not in the state
    assert [m for m in final["messages"] if isinstance(m, AIMessage)] == [final["messages"][-1]]
    assert "".join(shown).startswith("the whole")  # the UI saw the cut attempt's words first
    assert custom == [{"lamps_model_retry": {"session_id": custom[0]["lamps_model_retry"]["session_id"],
                                             "retry": 1, "error": "APIConnectionError"}}]  # fmt: skip
    assert "cut off (APIConnectionError: Connection error.)" in caplog.text
    assert "retry 1 of 2" in caplog.text


def test_async_too() -> None:
    model = DyingChatModel(cuts=2)
    agent, middleware = _agent(model)

    async def run() -> dict[str, Any]:
        result: dict[str, Any] = await agent.ainvoke({"messages": [("user", "hi")]})
        return result

    assert asyncio.run(run())["messages"][-1].content == "the whole answer"
    assert model.calls == 3 and middleware.num_model_retries == 2


def test_spent_retries_and_other_failures_raise() -> None:
    agent, middleware = _agent(DyingChatModel(cuts=5), model_retries=1)
    with pytest.raises(APIConnectionError):
        agent.invoke({"messages": [("user", "hi")]})
    assert middleware.num_model_retries == 1
    model = DyingChatModel(error="value")
    agent, middleware = _agent(model)
    with pytest.raises(ValueError, match="a bad request"):
        agent.invoke({"messages": [("user", "hi")]})
    assert model.calls == 1 and middleware.num_model_retries == 0
    agent, middleware = _agent(DyingChatModel(), model_retries=0)
    with pytest.raises(APIConnectionError):
        agent.invoke({"messages": [("user", "hi")]})


def test_a_reply_without_a_finish_reason_counts_as_cut() -> None:
    model = DyingChatModel(error=None)
    agent, middleware = _agent(model)
    for _ in agent.stream({"messages": [("user", "hi")]}, stream_mode="messages"):
        pass
    assert model.calls == 2 and middleware.num_model_retries == 1
    with pytest.raises(StreamCutError):
        check_complete(AIMessage(content="x", response_metadata={"model_provider": "openai"}))
    check_complete(AIMessage(content="x", response_metadata={"model_provider": "anthropic"}))
    check_complete(None)


def test_is_cut_by_class_name() -> None:
    class RemoteProtocolError(Exception):
        pass

    class TransportError(Exception):
        pass

    class Sub(TransportError):
        pass

    assert is_cut(APIConnectionError()) and is_cut(Sub()) and is_cut(ConnectionResetError())
    assert (
        not is_cut(RemoteProtocolError())
        and not is_cut(ValueError())
        and not is_cut(TimeoutError())
    )


@pytest.mark.parametrize(("kwargs", "message"), [({"model_retries": -1}, "model_retries"),
                                                 ({"retry_delay_s": -1}, "retry_delay_s")])  # fmt: skip
def test_bad_retry_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LampsMiddleware(**kwargs)
