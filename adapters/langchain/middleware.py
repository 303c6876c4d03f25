"""Agent middleware that tells the scheduler what an agent is about to do.

:class:`LampsMiddleware` goes into ``langchain.agents.create_agent(..., middleware=[...])``.  Around
each model call it attaches :class:`~adapters.langchain.hints.LampsHints` (session, predicted
output length, the likely tool and its duration, the KV strategy, a priority) to the request body;
after each model call it records the turn (output length, the tool called) in the tool registry,
the prompt's tail only with ``record_prompts=True``; around each tool call it times the call,
records it in the tool registry and tells an in-process engine that the agent now waits on the
tool.  A model call cut off mid-answer (its replica died under a streamed turn) is called again
from the start (:mod:`adapters.langchain.retry`).  Sync and async hooks share the same logic, so
the middleware behaves the same under ``invoke``, ``ainvoke`` and streaming.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain.agents.middleware.types import ExtendedModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command
from langsmith.utils import tracing_is_enabled

from adapters.langchain.hints import LampsHints, merge_extra_body
from adapters.langchain.planner import (
    CallStatus,
    HintPlanner,
    ModelTurn,
    PriorityFn,
    StrategyFn,
    ToolRecorder,
    ToolWaitListener,
)
from adapters.langchain.retry import CutRetry, check_complete
from lamps_agent.predictors.base import Predictor
from lamps_agent.presets import Preset

Transport = Literal["auto", "extra_body", "none"]
# The header that carries the session id next to the body's ``session_id``: vllm-router's
# session-affinity policies read it first (the body only as a fallback), and vLLM reads it as the
# request's session id.  One setting, so a user never configures the session twice.
SESSION_HEADER = "X-Session-ID"
ModelResult = ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]
ToolResult = ToolMessage | Command[Any]
_TRANSPORTS = ("auto", "extra_body", "none")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
logger = logging.getLogger(__name__)
_silent_models: set[type] = set()  # model classes already warned about (see sends_hints)
_silent_lock = threading.Lock()
_absent_attrs: dict[tuple[type, str], bool] = {}  # see model_attr


@dataclass(slots=True)
class _ToolCall:
    session_id: str
    tool: str
    call_id: str | None
    input_size: int
    started_at: float
    t0: float


class LampsMiddleware(AgentMiddleware[Any, Any, Any]):
    """Scheduling hints on every model call, durations of every tool call.

    Args:
        registry: where tool durations go and duration estimates come from (a
            ``tool_registry.ToolRegistry`` or anything with ``record`` and ``estimate``).
        predictor: predicts each turn; defaults to the core ``HistoryPredictor`` learning online,
            with the registry as its duration source.  Any ``Predictor`` can replace it.
        agent: the agent's name, part of the predictor's key and of the hints.
        tenant: the client these agents run for (``lamps_tenant`` in the hints); the engine gives
            each tenant its share of KV memory and seats while another waits (docs/scheduling.md,
            "Fair share").  ``None`` (the default): no tenant.
        preset: hardware preset the KV strategy and the priority are computed for.
        strategy: ``(*, context_tokens, tool_duration, preset) -> KVStrategy``; defaults to
            ``lamps_agent.strategy.choose_strategy`` (least waste).
        priority: a fixed int, or ``(prediction, prompt_tokens, strategy) -> int``; defaults to
            LAMPS' predicted memory-time area.
        listener: an in-process engine told when the agent starts and stops waiting on a tool.
        transport: ``"extra_body"`` sends hints in the HTTP body (OpenAI-compatible models),
            ``"none"`` only predicts and records, ``"auto"`` sends them to models that have an
            ``extra_body`` field (``ChatOpenAI`` and friends).
        send_priority: put ``priority`` in the body (vLLM rejects a non-zero one unless started
            with ``--scheduling-policy priority``); the value also travels as ``lamps_priority``.
        record_prompts: also store each turn's prompt tail (its last 2,000 characters) with the
            turn in the registry, for training the learned predictor on text.  Off by default:
            prompts may hold private data; without it a turn is stored as counts only.
        session_header: the HTTP header that carries the session id with every request the hints
            go with (``X-Session-ID``, which vllm-router routes sessions by; see docs/vllm.md,
            "Many replicas"); ``None`` sends none.  A session header the user set on the model
            or the call wins.
        model_retries: how many times a model call cut off mid-answer is called again (a stream
            that broke off: ``APIConnectionError``, or a reply without a finish reason); 0 turns
            it off.  ``num_model_retries`` counts them; each is logged.
        retry_delay_s: seconds before the first retry, doubling for each further one.

    A registry with ``record_turn`` (``tool_registry.ToolRegistry``) gets every model turn: the
    agent, step, tool the reply called (``None`` for a final answer), output tokens (the model's
    usage report, else a character estimate), prompt tokens and session id.
    """

    def __init__(
        self,
        *,
        registry: ToolRecorder | None = None,
        predictor: Predictor | None = None,
        agent: str = "agent",
        tenant: str | None = None,
        preset: Preset | str = "a100-gptj6b",
        strategy: StrategyFn | None = None,
        priority: PriorityFn | int | None = None,
        listener: ToolWaitListener | None = None,
        transport: Transport = "auto",
        send_priority: bool = True,
        record_prompts: bool = False,
        session_header: str | None = SESSION_HEADER,
        model_retries: int = 2,
        retry_delay_s: float = 0.5,
    ) -> None:
        super().__init__()
        if transport not in _TRANSPORTS:
            raise ValueError(
                f"transport must be one of {', '.join(_TRANSPORTS)}, got {transport!r}"
            )
        check_session_header(session_header)
        self.planner = HintPlanner(
            agent=agent,
            tenant=tenant,
            registry=registry,
            predictor=predictor,
            preset=preset,
            strategy=strategy,
            priority=priority,
            listener=listener,
            record_prompts=record_prompts,
        )
        self.transport: Transport = transport
        self.send_priority = bool(send_priority)
        self.session_header = session_header
        self._auto: dict[type, bool] = {}  # model class -> has an extra_body field
        self.retry = CutRetry(retries=model_retries, delay_s=retry_delay_s)
        if tracing_is_enabled():
            # LangSmith traces this process: the async hooks are coroutine functions again,
            # so each hook's span covers its call (see awrap_model_call).
            self.awrap_model_call = self._awrap_model_call  # type: ignore[method-assign]
            self.awrap_tool_call = self._awrap_tool_call  # type: ignore[method-assign]

    @property
    def num_model_retries(self) -> int:
        """Model calls cut off mid-answer and called again."""
        return self.retry.num_retries

    # -- model calls --------------------------------------------------------------------------

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResult:
        turn, request = self._before_model(request)
        for attempt in itertools.count():
            try:
                response = handler(request)
                check_complete(_reply_of(response))
                break
            except Exception as exc:
                if not self.retry.again(exc, attempt=attempt, session_id=turn.session_id):
                    raise
            time.sleep(self.retry.delay(attempt))
        self.planner.finish(turn, _reply_of(response))
        return response

    def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> Coroutine[Any, Any, ModelResult]:
        """The async hook: a plain function returning the call's coroutine.  ``create_agent``
        wraps every ``wrap_*`` hook in LangSmith's ``traceable``, whose wrapper for a coroutine
        function runs the span's set-up and end in the default thread pool and the hook in a new
        task, tracing on or off: two thread hand-offs per call, milliseconds at the tail on a
        busy machine (docs/benchmarks.md, "LangChain middleware overhead").  For a plain
        function it takes the synchronous path, as under ``invoke``.  With LangSmith tracing on
        when the middleware is made, the hooks are coroutine functions, so their spans time the
        call."""
        return self._awrap_model_call(request, handler)

    async def _awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResult:
        turn, request = self._before_model(request)
        for attempt in itertools.count():
            try:
                response = await handler(request)
                check_complete(_reply_of(response))
                break
            except Exception as exc:
                if not self.retry.again(exc, attempt=attempt, session_id=turn.session_id):
                    raise
            await asyncio.sleep(self.retry.delay(attempt))
        self.planner.finish(turn, _reply_of(response))
        return response

    def _before_model(self, request: ModelRequest[Any]) -> tuple[ModelTurn, ModelRequest[Any]]:
        info = getattr(request.runtime, "execution_info", None)
        session_id = self.planner.session_id(info.thread_id if info else None, request.messages)
        system = request.system_message
        extra = len(system.content) if system is not None and isinstance(system.content, str) else 0
        turn = self.planner.plan(session_id, request.messages, extra_chars=extra)
        if not self._sends_to(request.model):
            return turn, request
        settings = dict(request.model_settings)
        settings["extra_body"] = hint_body(
            turn.hints,
            send_priority=self.send_priority,
            model_extra_body=model_attr(request.model, "extra_body"),
            call_extra_body=settings.get("extra_body"),
        )
        headers = hint_headers(
            turn.hints.session_id,
            header=self.session_header,
            model=request.model,
            call_headers=settings.get("extra_headers"),
        )
        if headers is not None:
            settings["extra_headers"] = headers
        return turn, with_model_settings(request, settings)

    def _sends_to(self, model: BaseChatModel) -> bool:
        if self.transport != "auto":
            return self.transport == "extra_body"
        kind = type(model)
        sends = self._auto.get(kind)
        if sends is None:
            sends = self._auto[kind] = sends_hints(kind)
        return sends

    # -- tool calls ---------------------------------------------------------------------------

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolResult],
    ) -> ToolResult:
        call = self._before_tool(request)
        try:
            result = handler(request)
        except GraphBubbleUp:
            raise  # an interrupt or a jump, not a failure of the tool
        except BaseException as exc:
            self._after_tool(call, None, exc)
            raise
        self._after_tool(call, result, None)
        return result

    def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> Coroutine[Any, Any, ToolResult]:
        """The async hook, a plain function for the reason :meth:`awrap_model_call` gives."""
        return self._awrap_tool_call(request, handler)

    async def _awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolResult]],
    ) -> ToolResult:
        call = self._before_tool(request)
        try:
            result = await handler(request)
        except GraphBubbleUp:
            raise
        except BaseException as exc:
            self._after_tool(call, None, exc)
            raise
        self._after_tool(call, result, None)
        return result

    def _before_tool(self, request: ToolCallRequest) -> _ToolCall:
        tool_call = request.tool_call
        name = str(tool_call.get("name") or (request.tool.name if request.tool else "unknown"))
        call_id = tool_call.get("id")
        thread_id = _tool_thread_id(request)
        session_id = self.planner.session_id(
            thread_id, () if thread_id else _state_messages(request.state)
        )
        self.planner.tool_started(session_id, name, call_id)
        return _ToolCall(
            session_id=session_id,
            tool=name,
            call_id=call_id,
            input_size=len(str(tool_call.get("args", ""))),
            started_at=time.time(),
            t0=time.perf_counter(),
        )

    def _after_tool(
        self, call: _ToolCall, result: ToolResult | None, exc: BaseException | None
    ) -> None:
        duration = time.perf_counter() - call.t0
        status: CallStatus = "ok"
        error_type: str | None = None
        output_size: int | None = None
        if exc is not None:
            status, error_type = "error", type(exc).__name__
        elif isinstance(result, ToolMessage):
            content = result.content
            output_size = len(content) if isinstance(content, str) else len(str(content))
            if result.status == "error":  # a tool error the ToolNode turned into a message
                status, error_type = "error", "ToolMessageError"
        self.planner.tool_finished(
            session_id=call.session_id,
            tool=call.tool,
            call_id=call.call_id,
            started_at=call.started_at,
            duration=duration,
            status=status,
            error_type=error_type,
            input_size=call.input_size,
            output_size=output_size,
        )


def sends_hints(kind: type[BaseChatModel]) -> bool:
    """Whether the ``auto`` transport can send hints to models of class ``kind`` (it has an
    ``extra_body`` field, as ``ChatOpenAI`` has).  If not, a warning is logged, once per class:
    the scheduler then gets no hints, only the registry gets its records."""
    if "extra_body" in kind.model_fields:
        return True
    with _silent_lock:
        first = kind not in _silent_models
        _silent_models.add(kind)
    if first:
        logger.warning(
            "lamps: %s has no extra_body field, so scheduling hints are not sent to it (tool "
            "calls are still timed and recorded); use an OpenAI-compatible model such as "
            "ChatOpenAI, or transport='none' to say this is intended",
            kind.__name__,
        )
    return False


def hint_body(
    hints: LampsHints,
    *,
    send_priority: bool = True,
    model_extra_body: Mapping[str, Any] | None = None,
    call_extra_body: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``extra_body`` to send: the hints under the model's own ``extra_body`` under the
    per-call one (the user's keys always kept, and winning on collision; ``vllm_xargs`` merged)."""
    ours = hints.to_body()
    if not send_priority:
        del ours["priority"]
    if not model_extra_body and not call_extra_body:
        return ours  # nothing of the user's to merge (the common case): already a fresh dict
    return merge_extra_body(ours, model_extra_body, call_extra_body)


def check_session_header(header: str | None) -> None:
    """Raise ``ValueError`` unless ``header`` is ``None`` or a valid HTTP header name."""
    if header is None:
        return
    if not isinstance(header, str) or not header or not _HEADER_NAME.fullmatch(header):
        raise ValueError(f"session_header must be an HTTP header name or None, got {header!r}")


def hint_headers(
    session_id: str,
    *,
    header: str | None,
    model: object,
    call_headers: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The per-call ``extra_headers``: the session id under ``header``, with the headers the user
    gave the model (``model_kwargs["extra_headers"]``, which a per-call value would otherwise
    replace) and the call.  ``None`` (leave the call's headers as they are) when ``header`` is
    ``None`` or the user set that header already (there, or in the model's ``default_headers``)."""
    if header is None:
        return None
    model_kwargs = model_attr(model, "model_kwargs")
    model_headers = model_kwargs.get("extra_headers") if isinstance(model_kwargs, Mapping) else None
    default_headers = model_attr(model, "default_headers")
    if not model_headers and not call_headers and not default_headers:
        return {header: session_id}  # the common case: no header of the user's to keep
    user: dict[str, Any] = {**(model_headers or {}), **(call_headers or {})}
    if header.lower() in {str(k).lower() for k in (*user, *(default_headers or {}))}:
        return None
    return {header: session_id, **user}


def model_attr(model: object, name: str) -> Any:
    """``getattr(model, name, None)``, minus pydantic's cost for a name its class cannot have.

    On a pydantic model without that field, ``getattr`` goes through pydantic's ``__getattr__``,
    which raises an ``AttributeError`` for ``getattr`` to catch: microseconds on every model call
    for each such look-up.  Whether a class can have the name is decided once per class."""
    key = (type(model), name)
    absent = _absent_attrs.get(key)
    if absent is None:
        absent = _absent_attrs[key] = _cannot_have(type(model), name)
    return None if absent else getattr(model, name, None)


def _cannot_have(kind: type, name: str) -> bool:
    """A pydantic v2 model class whose instances never have ``name``: not a field, not a class
    attribute, not private, and no extra fields allowed."""
    fields = getattr(kind, "model_fields", None)
    config = getattr(kind, "model_config", None)
    return (
        isinstance(fields, dict)
        and isinstance(config, dict)
        and name not in fields
        and config.get("extra") != "allow"
        and not name.startswith("_")
        and not hasattr(kind, name)
    )


def with_model_settings(request: ModelRequest[Any], settings: dict[str, Any]) -> ModelRequest[Any]:
    """``request.override(model_settings=settings)``, at a fiftieth of its cost.

    ``override`` rebuilds the request through ``__init__``, which sets every field under
    ``warnings.catch_warnings()``: about 35 µs per model call, and resetting the warning filters
    also throws away every module's warning cache.  A ``ModelRequest`` is a plain dataclass, so
    the same new request (the original left unchanged) is a copy of its fields with one replaced.
    Anything else (a subclass, a future slotted class) goes through ``override``.
    """
    fields = getattr(request, "__dict__", None)
    if type(request) is not ModelRequest or fields is None or "model_settings" not in fields:
        return request.override(model_settings=settings)
    new = object.__new__(ModelRequest)
    new.__dict__.update(fields)
    new.__dict__["model_settings"] = settings
    return new


def _reply_of(response: object) -> BaseMessage | None:
    if isinstance(response, AIMessage):
        return response
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    if isinstance(response, ModelResponse):
        return next((m for m in reversed(response.result) if isinstance(m, AIMessage)), None)
    return None


def _tool_thread_id(request: ToolCallRequest) -> Any:
    runtime = request.runtime
    info = getattr(runtime, "execution_info", None)
    if info is not None and info.thread_id:
        return info.thread_id
    config = getattr(runtime, "config", None) or {}
    return config.get("configurable", {}).get("thread_id")


def _state_messages(state: Any) -> Sequence[BaseMessage]:
    if isinstance(state, Mapping):
        messages = state.get("messages", ())
    else:
        messages = getattr(state, "messages", state if isinstance(state, list) else ())
    return messages if isinstance(messages, Sequence) else ()
