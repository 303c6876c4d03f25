"""The middleware with the real tool registry on a temporary SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")
tool_registry = pytest.importorskip("tool_registry")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from lc_fakes import RecordingChatModel, run_agent, tool_rounds  # noqa: E402

from adapters.langchain import LampsHints, LampsMiddleware, ToolRecorder  # noqa: E402
from lamps_agent.predictors.base import PredictionQuery  # noqa: E402


@tool
def fetch(seconds: float) -> str:
    """Pretend to call a slow service."""
    time.sleep(seconds)
    return "ok"


@tool
def crash(x: int) -> int:
    """Always fails."""
    raise KeyError(x)


@tool
def idle_tool() -> str:
    """Registered, never called."""
    return ""


def query(tool_name: str) -> PredictionQuery:
    return PredictionQuery(agent="integration", step=0, tool=tool_name, prompt_tokens=10)


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_durations_land_in_the_registry(tmp_path: Path, mode: str) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    with tool_registry.ToolRegistry(url, spill_dir=tmp_path) as registry:
        assert isinstance(registry, ToolRecorder)
        registry.register(fetch, duration_hint=0.3, api_type="http")
        script = tool_rounds([("fetch", {"seconds": 0.05}), ("fetch", {"seconds": 0.05})])
        model = RecordingChatModel(script=script)
        middleware = LampsMiddleware(registry=registry, agent="integration")
        agent = create_agent(model, [fetch, crash], middleware=[middleware])
        t0 = time.perf_counter()
        run_agent(agent, "x", mode=mode, thread_id="db-thread")
        wall = time.perf_counter() - t0  # no tool call can have taken longer than its agent
        failing = create_agent(
            RecordingChatModel(script=tool_rounds([("crash", {"x": 1})])),
            [fetch, crash],
            middleware=[middleware],
        )
        with pytest.raises(KeyError):
            run_agent(failing, "y", mode=mode, thread_id="db-thread")
        registry.flush()
        stats = {s.tool: s for s in registry.stats()}
        assert stats["fetch"].count == 2 and stats["fetch"].error_count == 0
        assert stats["fetch"].min > 0.049 and stats["fetch"].max < wall  # the sleep, within it
        assert stats["crash"].count == 1 and stats["crash"].error_count == 1
        # a tool timed by the agent is predicted from its history; one never called falls back
        # on the registry's estimate (here its duration hint)
        registry.register(idle_tool, duration_hint=0.7)
        predictor = middleware.planner.predictor
        assert 0.049 < predictor.predict(query("fetch")).tool_duration < wall
        assert predictor.predict(query("idle_tool")).tool_duration == pytest.approx(0.7)
        assert LampsHints.from_body(model.calls[0]["extra_body"]).session_id == "db-thread"


@pytest.mark.parametrize("record_prompts", [False, True])
def test_model_turns_land_in_the_registry(tmp_path: Path, record_prompts: bool) -> None:
    url = f"sqlite:///{tmp_path}/registry.db"
    with tool_registry.ToolRegistry(url, spill_dir=tmp_path) as registry:
        script = tool_rounds([("fetch", {"seconds": 0.01})])
        middleware = LampsMiddleware(
            registry=registry, agent="integration", record_prompts=record_prompts
        )
        agent = create_agent(RecordingChatModel(script=script), [fetch], middleware=[middleware])
        run_agent(agent, "hello there", mode="invoke", thread_id="turn-thread")
        registry.flush()
        turns = sorted(registry.iter_turns(agent="integration"), key=lambda t: t.step)
    assert [(t.step, t.tool, t.session_id) for t in turns] == [
        (0, "fetch", "turn-thread"),
        (1, None, "turn-thread"),
    ]
    assert all(t.output_tokens >= 1 and t.prompt_tokens is not None for t in turns)
    if record_prompts:
        assert turns[0].prompt_text == "human: hello there"
        assert turns[1].prompt_text is not None and "tool: ok" in turns[1].prompt_text
    else:
        assert all(t.prompt_text is None for t in turns)
