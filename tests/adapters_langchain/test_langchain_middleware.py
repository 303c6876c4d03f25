"""LampsMiddleware inside create_agent, with a fake chat model that emits tool calls (no network):
hints on every model call, the user's extra_body kept, durations recorded for parallel and failing
tool calls, under invoke, ainvoke, stream and astream alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage  # noqa: E402
from langchain_core.tools import ToolException, tool  # noqa: E402
from lc_fakes import (  # noqa: E402
    MODES,
    FakeRegistry,
    Mode,
    PlainChatModel,
    RecordingChatModel,
    run_agent,
    tool_rounds,
)

from adapters.langchain import LampsHints, LampsMiddleware  # noqa: E402
from adapters.langchain.planner import output_token_count  # noqa: E402
from lamps_agent.predictors.base import Outcome, Prediction, PredictionQuery, Predictor  # noqa: E402
from lamps_agent.request import KVStrategy  # noqa: E402
from lamps_agent.strategy import choose_strategy  # noqa: E402


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def slow(seconds: float) -> str:
    """Sleep, then report."""
    time.sleep(seconds)
    return f"slept {seconds}"


@tool
def boom(x: int) -> int:
    """Always fails."""
    raise ValueError(f"boom {x}")


@tool
def refuse(x: int) -> int:
    """Fails with an error the tool node turns into a message."""
    raise ToolException(f"refused {x}")


refuse.handle_tool_error = True
TOOLS = [add, slow, boom, refuse]


def agent_with(
    script: Callable[[list[BaseMessage]], AIMessage],
    registry: FakeRegistry | None = None,
    *,
    model: Any = None,
    extra: list[AgentMiddleware[Any, Any, Any]] | None = None,
    **kwargs: Any,
) -> tuple[Any, Any, LampsMiddleware]:
    model = model if model is not None else RecordingChatModel(script=script)
    middleware = LampsMiddleware(registry=registry, agent="test", **kwargs)
    agent = create_agent(model, TOOLS, middleware=[*(extra or []), middleware])
    return agent, model, middleware


def hints_of(model: RecordingChatModel) -> list[LampsHints]:
    return [LampsHints.from_body(call["extra_body"]) for call in model.calls]


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(hints={"slow": 2.0, "add": 0.01})


@pytest.mark.parametrize("mode", MODES)
def test_hints_on_every_model_call(mode: Mode, registry: FakeRegistry) -> None:
    script = tool_rounds([("add", {"a": 1, "b": 2})], [("slow", {"seconds": 0.0})])
    agent, model, _ = agent_with(script, registry)
    state = run_agent(agent, "go", mode=mode, thread_id="thread-1")
    assert state["messages"][-1].content.startswith("done")
    hints = hints_of(model)
    assert [h.step for h in hints] == [0, 1, 2]
    assert {h.session_id for h in hints} == {"thread-1"}
    assert {h.agent for h in hints} == {"test"}
    for call, h in zip(model.calls, hints, strict=True):
        assert call["extra_body"]["priority"] == h.priority >= 0
        assert call["extra_body"]["session_id"] == "thread-1"
        assert h.output_tokens >= 1 and isinstance(h.kv_strategy, KVStrategy)
    # each hint reports the tool call that just returned
    assert hints[0].last_tool is None
    assert hints[1].last_tool == "add" and hints[2].last_tool == "slow"
    assert hints[1].last_tool_duration is not None and hints[1].last_tool_duration >= 0


def test_hints_learn_online(registry: FakeRegistry) -> None:
    script = tool_rounds([("add", {"a": 1, "b": 2})], [("slow", {"seconds": 0.0})])
    agent, model, _ = agent_with(script, registry)
    run_agent(agent, "first", mode="invoke", thread_id="a")
    first_reply = script([])  # the step-0 reply: a call to add
    run_agent(agent, "second", mode="invoke", thread_id="b")
    cold, warm = hints_of(model)[0], hints_of(model)[3]
    assert cold.tool is None and cold.tool_duration == 0  # nothing known yet
    assert warm.step == 0 and warm.tool == "add"
    assert warm.output_tokens == output_token_count(first_reply)
    assert warm.tool_duration == pytest.approx(registry.by_tool("add")[0]["duration"])
    assert hints_of(model)[4].tool == "slow"


def test_kv_strategy_is_the_core_least_waste_choice(registry: FakeRegistry) -> None:
    script = tool_rounds([("slow", {"seconds": 0.0})])
    seen: list[dict[str, Any]] = []

    def strategy(**kwargs: Any) -> KVStrategy:
        seen.append(kwargs)
        return choose_strategy(**kwargs)

    agent, model, _ = agent_with(script, registry, strategy=strategy)
    run_agent(agent, "x", mode="invoke", thread_id="t")
    run_agent(agent, "x", mode="invoke", thread_id="u")
    hints = hints_of(model)
    assert len(seen) == len(hints)
    for args, h in zip(seen, hints, strict=True):
        assert h.kv_strategy is choose_strategy(**args)
        assert args["tool_duration"] == h.tool_duration
    assert hints[2].tool == "slow" and seen[2]["tool_duration"] > 0


def test_fixed_and_callable_priority(registry: FakeRegistry) -> None:
    script = tool_rounds()
    agent, model, _ = agent_with(script, registry, priority=5)
    run_agent(agent, "x", mode="invoke")
    assert model.calls[0]["extra_body"]["priority"] == 5

    agent, model, _ = agent_with(
        script, registry, priority=lambda p, prompt, s: int(p.output_tokens)
    )
    run_agent(agent, "x", mode="invoke")
    assert model.calls[0]["extra_body"]["priority"] == 128  # HistoryPredictor's default


def test_the_tenant_travels_with_every_call(registry: FakeRegistry) -> None:
    agent, model, _ = agent_with(tool_rounds(), registry, tenant="acme")
    run_agent(agent, "x", mode="invoke")
    assert {h.tenant for h in hints_of(model)} == {"acme"}
    assert model.calls[0]["extra_body"]["vllm_xargs"]["lamps_tenant"] == "acme"
    agent, model, _ = agent_with(tool_rounds(), registry)
    run_agent(agent, "x", mode="invoke")
    assert "lamps_tenant" not in model.calls[0]["extra_body"]["vllm_xargs"]
    with pytest.raises(ValueError, match="tenant must be a non-empty string"):
        LampsMiddleware(registry=registry, tenant="")


def test_send_priority_off_keeps_it_in_xargs(registry: FakeRegistry) -> None:
    agent, model, _ = agent_with(tool_rounds(), registry, send_priority=False)
    run_agent(agent, "x", mode="invoke")
    body = model.calls[0]["extra_body"]
    assert "priority" not in body
    assert isinstance(body["vllm_xargs"]["lamps_priority"], int)


class UserSettings(AgentMiddleware[Any, Any, Any]):
    """A user's own middleware putting a per-call extra_body in the model settings."""

    def wrap_model_call(
        self, request: ModelRequest[Any], handler: Callable[[ModelRequest[Any]], ModelResponse[Any]]
    ) -> Any:
        extra = {"repetition_penalty": 1.1, "vllm_xargs": {"per_call": 1}}
        return handler(
            request.override(model_settings={**request.model_settings, "extra_body": extra})
        )

    async def awrap_model_call(self, request: ModelRequest[Any], handler: Any) -> Any:
        extra = {"repetition_penalty": 1.1, "vllm_xargs": {"per_call": 1}}
        return await handler(
            request.override(model_settings={**request.model_settings, "extra_body": extra})
        )


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_user_extra_body_is_preserved(mode: Mode, registry: FakeRegistry) -> None:
    own = {"top_k": 5, "priority": 7, "vllm_xargs": {"user_arg": "u"}}
    model = RecordingChatModel(script=tool_rounds([("add", {"a": 1, "b": 1})]), extra_body=own)
    agent, _, _ = agent_with(model.script, registry, model=model, extra=[UserSettings()])
    run_agent(agent, "x", mode=mode, thread_id="s")
    for call in model.calls:
        body = call["extra_body"]
        assert body["top_k"] == 5 and body["repetition_penalty"] == 1.1
        assert body["priority"] == 7  # the user's value wins a collision
        assert body["session_id"] == "s"
        xargs = body["vllm_xargs"]
        assert xargs["user_arg"] == "u" and xargs["per_call"] == 1
        assert xargs["lamps_hint_version"] == 1
    assert model.extra_body == own  # the model itself is not changed


@pytest.mark.parametrize("mode", MODES)
def test_parallel_tool_calls_are_recorded(mode: Mode, registry: FakeRegistry) -> None:
    calls = [("slow", {"seconds": 0.2}), ("slow", {"seconds": 0.2}), ("add", {"a": 2, "b": 3})]
    agent, model, _ = agent_with(tool_rounds(calls), registry)
    t0 = time.perf_counter()
    state = run_agent(agent, "x", mode=mode, thread_id="par")
    wall = time.perf_counter() - t0
    assert "'5'" in state["messages"][-1].content
    slow_records = registry.by_tool("slow")
    assert len(slow_records) == 2 and len(registry.by_tool("add")) == 1
    for record in registry.records:
        assert record["status"] == "ok" and record["session_id"] == "par"
        assert record["error_type"] is None and record["input_size"] > 0
    # each call is timed on its own: a slow one takes its sleep, within the agent's run, and
    # the instant one is not charged the batch's time (bounds from clocks, not from guesses)
    assert all(0.199 < r["duration"] < wall for r in slow_records)
    first, second = sorted(slow_records, key=lambda r: r["started_at"])
    assert second["started_at"] < first["started_at"] + first["duration"]  # they overlapped
    assert registry.by_tool("add")[0]["duration"] < min(r["duration"] for r in slow_records)
    assert hints_of(model)[1].last_tool == "slow"  # the agent waited on the slowest


def run_expecting(agent: Any, mode: Mode) -> BaseException:
    with pytest.raises(ValueError, match="boom 3") as info:
        run_agent(agent, "x", mode=mode, thread_id="err")
    return info.value


@pytest.mark.parametrize("mode", MODES)
def test_failing_tool_is_recorded_and_still_raises(mode: Mode, registry: FakeRegistry) -> None:
    script = tool_rounds([("boom", {"x": 3}), ("add", {"a": 1, "b": 1})])
    bare = create_agent(RecordingChatModel(script=script), TOOLS)
    without = run_expecting(bare, mode)
    agent, _, _ = agent_with(script, registry)
    with_middleware = run_expecting(agent, mode)
    assert type(with_middleware) is type(without) and str(with_middleware) == str(without)
    (failure,) = registry.by_tool("boom")
    assert failure["status"] == "error" and failure["error_type"] == "ValueError"
    assert failure["session_id"] == "err" and failure["duration"] >= 0


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_tool_error_message_is_recorded_as_error(mode: Mode, registry: FakeRegistry) -> None:
    agent, _, _ = agent_with(tool_rounds([("refuse", {"x": 1})]), registry)
    state = run_agent(agent, "x", mode=mode)
    assert "refused 1" in state["messages"][-1].content
    (record,) = registry.by_tool("refuse")
    assert record["status"] == "error" and record["error_type"] == "ToolMessageError"


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def on_tool_wait(self, **kwargs: Any) -> None:
        self.events.append(("wait", kwargs))

    def on_tool_done(self, **kwargs: Any) -> None:
        self.events.append(("done", kwargs))


def test_listener_hears_each_tool_wait(registry: FakeRegistry) -> None:
    listener = Listener()
    script = tool_rounds([("slow", {"seconds": 0.0}), ("boom", {"x": 3})])
    agent, _, _ = agent_with(script, registry, listener=listener)
    with pytest.raises(ValueError):
        run_agent(agent, "x", mode="invoke", thread_id="l")
    waits = {e["tool"]: e for kind, e in listener.events if kind == "wait"}
    dones = {e["tool"]: e for kind, e in listener.events if kind == "done"}
    assert waits["slow"] == {"session_id": "l", "tool": "slow", "predicted_duration": 2.0}
    assert waits["boom"]["predicted_duration"] == 5.0  # the registry's default estimate
    assert dones["slow"]["ok"] is True and dones["boom"]["ok"] is False


class FixedPredictor(Predictor):
    def __init__(self) -> None:
        self.observed: list[tuple[PredictionQuery, Outcome]] = []

    def predict(self, query: PredictionQuery) -> Prediction:
        return Prediction(output_tokens=77, tool="slow", tool_duration=3.5, returned_tokens=1)

    def observe(self, query: PredictionQuery, outcome: Outcome) -> None:
        self.observed.append((query, outcome))


def test_any_predictor_can_replace_the_default(registry: FakeRegistry) -> None:
    predictor = FixedPredictor()
    agent, model, _ = agent_with(
        tool_rounds([("add", {"a": 1, "b": 1})]), registry, predictor=predictor
    )
    run_agent(agent, "x", mode="invoke")
    for h in hints_of(model):
        assert (h.output_tokens, h.tool, h.tool_duration) == (77, "slow", 3.5)
    outcomes = [o for _, o in predictor.observed]
    assert [o.tool for o in outcomes] == ["add", None]
    assert outcomes[0].tool_duration == pytest.approx(registry.by_tool("add")[0]["duration"])
    assert predictor.observed[0][0].step == 0 and predictor.observed[1][0].step == 1


def test_transport_none_and_auto(registry: FakeRegistry) -> None:
    agent, model, _ = agent_with(tool_rounds(), registry, transport="none")
    run_agent(agent, "x", mode="invoke")
    assert "extra_body" not in model.calls[0]

    plain = PlainChatModel(script=tool_rounds())
    agent, _, _ = agent_with(plain.script, registry, model=plain)
    run_agent(agent, "x", mode="invoke")
    assert "extra_body" not in plain.calls[0]  # auto: this model has no extra_body

    plain = PlainChatModel(script=tool_rounds())
    agent, _, _ = agent_with(plain.script, registry, model=plain, transport="extra_body")
    run_agent(agent, "x", mode="invoke")
    assert LampsHints.from_body(plain.calls[0]["extra_body"]).step == 0


def test_session_without_thread_id_is_stable_within_a_run(registry: FakeRegistry) -> None:
    agent, model, _ = agent_with(tool_rounds([("add", {"a": 1, "b": 1})]), registry)
    run_agent(agent, "x", mode="invoke")
    run_agent(agent, "x", mode="invoke")
    sessions = [h.session_id for h in hints_of(model)]
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3]
    assert registry.records[0]["session_id"] == sessions[0]


def test_a_broken_registry_does_not_break_the_agent() -> None:
    class Broken(FakeRegistry):
        def record(self, tool: str, *, duration: float, **fields: Any) -> None:
            raise RuntimeError("database down")

    agent, _, _ = agent_with(tool_rounds([("add", {"a": 1, "b": 1})]), Broken())
    assert run_agent(agent, "x", mode="invoke")["messages"][-1].content.startswith("done")


def test_without_a_registry_hints_still_flow() -> None:
    agent, model, _ = agent_with(tool_rounds([("add", {"a": 1, "b": 1})]), None)
    run_agent(agent, "x", mode="invoke")
    assert len(hints_of(model)) == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"transport": "http"}, ValueError),
        ({"priority": True}, ValueError),
        ({"priority": 2**40}, ValueError),
        ({"registry": object()}, TypeError),
        ({"predictor": object()}, TypeError),
        ({"agent": ""}, ValueError),
        ({"record_prompts": "yes"}, TypeError),
        ({"preset": "no-such-preset"}, Exception),
    ],
)
def test_constructor_validates(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LampsMiddleware(**kwargs)


def test_constructor_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        LampsMiddleware(FakeRegistry())  # type: ignore[misc]


def test_concurrent_sessions_with_equal_call_ids_are_kept_apart(registry: FakeRegistry) -> None:
    slow_first = tool_rounds([("slow", {"seconds": 0.05})])
    add_first = tool_rounds([("add", {"a": 1, "b": 1})])  # same tool-call ids as slow_first

    def script(messages: list[BaseMessage]) -> AIMessage:
        return (slow_first if messages[0].content == "A" else add_first)(messages)

    predictor = FixedPredictor()
    agent, _, _ = agent_with(script, registry, predictor=predictor)

    async def both() -> None:
        config_a: Any = {"configurable": {"thread_id": "A"}}
        config_b: Any = {"configurable": {"thread_id": "B"}}
        await asyncio.gather(
            agent.ainvoke({"messages": [HumanMessage("A")]}, config_a),
            agent.ainvoke({"messages": [HumanMessage("B")]}, config_b),
        )

    asyncio.run(both())
    turns = sorted((q.step, o.tool or "") for q, o in predictor.observed)
    assert turns == [(0, "add"), (0, "slow"), (1, ""), (1, "")]
    slow_turn = next(o for _, o in predictor.observed if o.tool == "slow")
    assert slow_turn.tool_duration >= 0.05


def test_a_checkpointed_conversation_keeps_its_session_and_counts_steps_across_runs(
    registry: FakeRegistry,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    model = RecordingChatModel(script=tool_rounds([("add", {"a": 1, "b": 1})]))
    middleware = LampsMiddleware(registry=registry, agent="test")
    agent = create_agent(model, TOOLS, middleware=[middleware], checkpointer=InMemorySaver())
    run_agent(agent, "first", mode="invoke", thread_id="T")
    run_agent(agent, "second", mode="invoke", thread_id="T")
    hints = hints_of(model)
    assert [(h.session_id, h.step) for h in hints] == [("T", 0), ("T", 1), ("T", 2)]


def test_with_model_settings_is_override_without_its_cost() -> None:
    """The fast copy gives the request ``override`` gives, and leaves the original alone."""
    import dataclasses

    from langchain.agents.middleware import ModelRequest
    from langchain_core.messages import HumanMessage, SystemMessage

    from adapters.langchain.middleware import with_model_settings

    model = RecordingChatModel(script=tool_rounds())
    request = ModelRequest(
        model=model,
        messages=[HumanMessage("hi")],
        system_message=SystemMessage("be brief"),
        tool_choice="auto",
        model_settings={"temperature": 0},
    )
    settings = {"temperature": 0, "extra_body": {"session_id": "s"}}
    fast, slow = with_model_settings(request, settings), request.override(model_settings=settings)
    assert type(fast) is ModelRequest and fast is not request
    for f in dataclasses.fields(ModelRequest):
        assert getattr(fast, f.name) is getattr(slow, f.name) or (
            getattr(fast, f.name) == getattr(slow, f.name)
        ), f.name
    assert request.model_settings == {"temperature": 0}

    class Custom(ModelRequest):  # anything but a plain ModelRequest takes the documented path
        pass

    custom = Custom(model=model, messages=[], model_settings={})
    assert type(with_model_settings(custom, settings)) is Custom


def test_model_attr_reads_what_getattr_reads() -> None:
    """The per-class shortcut for a name a chat model cannot have never hides one it has."""
    from pydantic import BaseModel, ConfigDict

    from adapters.langchain.middleware import model_attr

    class Plain(BaseModel):
        default_headers: dict[str, str] | None = None

    class Extra(BaseModel):
        model_config = ConfigDict(extra="allow")

    class NotPydantic:
        model_kwargs = {"a": 1}  # noqa: RUF012

    assert model_attr(Plain(default_headers={"x": "y"}), "default_headers") == {"x": "y"}
    assert model_attr(Plain(), "model_kwargs") is None
    assert model_attr(Plain(), "model_kwargs") is None  # the cached answer
    assert model_attr(Extra(model_kwargs={"k": 1}), "model_kwargs") == {"k": 1}
    assert model_attr(NotPydantic(), "model_kwargs") == {"a": 1}


def test_async_hooks_skip_langsmiths_thread_hand_offs(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``ainvoke`` the middleware's hooks add no LangSmith thread-pool hand-off (the
    ``traceable`` wrapper create_agent puts around a coroutine-function hook makes two per call)."""
    import langsmith._internal._aiter as aiter

    hand_offs = 0
    original = aiter.aio_to_thread

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal hand_offs
        hand_offs += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(aiter, "aio_to_thread", counted)
    script = tool_rounds([("add", {"a": 1, "b": 2})], [("slow", {"seconds": 0.0})])
    agent, model, middleware = agent_with(script, registry)
    state = run_agent(agent, "go", mode="ainvoke", thread_id="t")
    assert state["messages"][-1].content.startswith("done")
    assert [h.step for h in hints_of(model)] == [0, 1, 2]  # the hooks ran, hints went out
    assert len(registry.records) == 2  # and both tools were timed and recorded
    assert hand_offs == 0
    assert not asyncio.iscoroutinefunction(middleware.awrap_model_call)


def test_with_tracing_on_the_async_hooks_stay_coroutine_functions() -> None:
    """With LangSmith tracing on, each hook's span must cover its call: coroutine functions."""
    from langsmith.run_helpers import tracing_context

    with tracing_context(enabled=True):
        traced = LampsMiddleware(agent="traced")
    assert asyncio.iscoroutinefunction(traced.awrap_model_call)
    assert asyncio.iscoroutinefunction(traced.awrap_tool_call)
    with tracing_context(enabled=False):
        plain = LampsMiddleware(agent="plain")
    assert not asyncio.iscoroutinefunction(plain.awrap_model_call)
    assert not asyncio.iscoroutinefunction(plain.awrap_tool_call)
