"""A chat model that sends scheduling hints with every call, for agents built without
``create_agent`` (custom LangGraph graphs, plain loops).

``wrap(llm, registry=...)`` returns a :class:`LampsChatModel`: a chat model that predicts each call
like :class:`~adapters.langchain.middleware.LampsMiddleware` does, merges the hints into the
request's ``extra_body`` and delegates to ``llm``.  ``bind_tools`` and ``with_structured_output``
keep going through the wrapper.  The session is a ``lamps_session_id`` in the run's metadata, else
the LangGraph thread id (``{"configurable": {"thread_id": ...}}`` on the call, or the graph's run
it is called from), else one derived from the conversation's first message, as for the middleware.
Tool durations are not seen here: record them with the middleware or the callback handler.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from pydantic import ConfigDict

from adapters.langchain.middleware import (
    SESSION_HEADER,
    Transport,
    check_session_header,
    hint_body,
    hint_headers,
    sends_hints,
)
from adapters.langchain.planner import (
    HintPlanner,
    ModelTurn,
    PriorityFn,
    StrategyFn,
    ToolRecorder,
    ToolWaitListener,
)
from lamps_agent.predictors.base import Predictor
from lamps_agent.presets import Preset

RunManager = CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun
_SESSION_KWARG = "_lamps_session"  # from the public entry points to _prepare, never sent on


class LampsChatModel(BaseChatModel):
    """``inner`` with LAMPS hints on every call (build it with :func:`wrap`)."""

    inner: BaseChatModel
    planner: HintPlanner
    transport: Literal["auto", "extra_body", "none"] = "auto"
    send_priority: bool = True
    session_header: str | None = SESSION_HEADER

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return f"lamps-{self.inner._llm_type}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"inner": self.inner._identifying_params, "agent": self.planner.agent}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools the way ``inner`` formats them, keeping this wrapper in the call path."""
        bound = self.inner.bind_tools(tools, tool_choice=tool_choice, **kwargs)
        if not isinstance(bound, RunnableBinding):
            raise TypeError(
                f"{type(self.inner).__name__}.bind_tools did not return a RunnableBinding"
            )
        return self.bind(**bound.kwargs)

    # -- calls --------------------------------------------------------------------------------
    # The public entry points read the run's session from its config and hand it down as a
    # keyword argument: ``_stream`` gets no callback manager, so metadata cannot carry it there.

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        config, kwargs = _with_session(config, kwargs)
        return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        config, kwargs = _with_session(config, kwargs)
        return await super().ainvoke(input, config, stop=stop, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, kwargs = _with_session(config, kwargs)
        yield from super().stream(input, config, stop=stop, **kwargs)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, kwargs = _with_session(config, kwargs)
        async for chunk in super().astream(input, config, stop=stop, **kwargs):
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn, kwargs = self._prepare(messages, run_manager, kwargs)
        result = self.inner._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        self.planner.finish(turn, _first_message(result))
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        turn, kwargs = self._prepare(messages, run_manager, kwargs)
        result = await self.inner._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        self.planner.finish(turn, _first_message(result))
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        turn, kwargs = self._prepare(messages, run_manager, kwargs)
        if type(self.inner)._stream is BaseChatModel._stream:  # the inner model cannot stream
            result = self.inner._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
            self.planner.finish(turn, _first_message(result))
            yield from _as_chunks(result)
            return
        total: ChatGenerationChunk | None = None
        for chunk in self.inner._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            total = chunk if total is None else total + chunk
            yield chunk
        self.planner.finish(turn, total.message if total is not None else None)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        turn, kwargs = self._prepare(messages, run_manager, kwargs)
        inner = type(self.inner)
        if inner._astream is BaseChatModel._astream and inner._stream is BaseChatModel._stream:
            result = await self.inner._agenerate(
                messages, stop=stop, run_manager=run_manager, **kwargs
            )
            self.planner.finish(turn, _first_message(result))
            for piece in _as_chunks(result):
                yield piece
            return
        total: ChatGenerationChunk | None = None
        async for chunk in self.inner._astream(
            messages, stop=stop, run_manager=run_manager, **kwargs
        ):
            total = chunk if total is None else total + chunk
            yield chunk
        self.planner.finish(turn, total.message if total is not None else None)

    def _prepare(
        self, messages: list[BaseMessage], run_manager: RunManager | None, kwargs: dict[str, Any]
    ) -> tuple[ModelTurn, dict[str, Any]]:
        kwargs = dict(kwargs)
        thread_id = kwargs.pop(_SESSION_KWARG, None)
        if thread_id is None and run_manager is not None:  # called through generate()
            thread_id = _session_of(run_manager.metadata, {})
        session_id = self.planner.session_id(thread_id, messages)
        turn = self.planner.plan(session_id, messages)
        if self.transport == "none" or (
            self.transport == "auto" and not sends_hints(type(self.inner))
        ):
            return turn, kwargs
        kwargs["extra_body"] = hint_body(
            turn.hints,
            send_priority=self.send_priority,
            model_extra_body=getattr(self.inner, "extra_body", None),
            call_extra_body=kwargs.get("extra_body"),
        )
        headers = hint_headers(
            turn.hints.session_id,
            header=self.session_header,
            model=self.inner,
            call_headers=kwargs.get("extra_headers"),
        )
        if headers is not None:
            kwargs["extra_headers"] = headers
        return turn, kwargs


def _session_of(metadata: Mapping[str, Any], configurable: Mapping[str, Any]) -> Any:
    """A ``lamps_session_id`` in the metadata, else the LangGraph thread id."""
    return (
        metadata.get("lamps_session_id")
        or metadata.get("thread_id")
        or configurable.get("thread_id")
    )


def _with_session(
    config: RunnableConfig | None, kwargs: dict[str, Any]
) -> tuple[RunnableConfig, dict[str, Any]]:
    """``config`` merged with the enclosing run's (as LangChain merges it), and ``kwargs`` with
    the run's session added for ``_prepare``."""
    config = ensure_config(config)
    session = _session_of(config.get("metadata") or {}, config.get("configurable") or {})
    if session is not None:
        kwargs = {**kwargs, _SESSION_KWARG: session}
    return config, kwargs


def _first_message(result: ChatResult) -> BaseMessage | None:
    return result.generations[0].message if result.generations else None


def _as_chunks(result: ChatResult) -> Iterator[ChatGenerationChunk]:
    for generation in result.generations:
        message = generation.message
        chunk = AIMessageChunk(
            content=message.content,
            id=message.id,
            tool_call_chunks=[
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(getattr(message, "tool_calls", []))
            ],
            usage_metadata=getattr(message, "usage_metadata", None),
            response_metadata=message.response_metadata,
        )
        yield ChatGenerationChunk(message=chunk)


def wrap(
    llm: BaseChatModel,
    *,
    registry: ToolRecorder | None = None,
    predictor: Predictor | None = None,
    agent: str = "agent",
    preset: Preset | str = "a100-gptj6b",
    strategy: StrategyFn | None = None,
    priority: PriorityFn | int | None = None,
    listener: ToolWaitListener | None = None,
    transport: Transport = "auto",
    send_priority: bool = True,
    record_prompts: bool = False,
    planner: HintPlanner | None = None,
    session_header: str | None = SESSION_HEADER,
) -> LampsChatModel:
    """Wrap ``llm`` so every call carries LAMPS hints (arguments as for ``LampsMiddleware``).

    Pass ``planner=middleware.planner`` to share one predictor and registry with a middleware or
    a callback handler; the other prediction arguments are then ignored.
    """
    if not isinstance(llm, BaseChatModel):
        raise TypeError(f"wrap() needs a LangChain chat model, got {type(llm).__name__}")
    if transport not in ("auto", "extra_body", "none"):
        raise ValueError(f"transport must be 'auto', 'extra_body' or 'none', got {transport!r}")
    check_session_header(session_header)
    if planner is None:
        planner = HintPlanner(
            agent=agent,
            registry=registry,
            predictor=predictor,
            preset=preset,
            strategy=strategy,
            priority=priority,
            listener=listener,
            record_prompts=record_prompts,
        )
    return LampsChatModel(
        inner=llm,
        planner=planner,
        transport=transport,
        send_priority=send_priority,
        session_header=session_header,
    )
