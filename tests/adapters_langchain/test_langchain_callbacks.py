"""LampsToolCallbackHandler: tool durations recorded from callbacks (legacy AgentExecutor style)."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")

from langchain_core.tools import tool  # noqa: E402
from lc_fakes import FakeRegistry  # noqa: E402

from adapters.langchain import LampsMiddleware, LampsToolCallbackHandler  # noqa: E402


@tool
def nap(seconds: float) -> str:
    """Sleep a little."""
    time.sleep(seconds)
    return "rested"


@tool
def broken(x: int) -> int:
    """Always fails."""
    raise RuntimeError("no")


def test_records_ok_and_error_calls_with_the_thread_id() -> None:
    registry = FakeRegistry()
    handler = LampsToolCallbackHandler(registry=registry)
    config = {"callbacks": [handler], "metadata": {"thread_id": "exec-1"}}
    t0 = time.perf_counter()
    assert nap.invoke({"seconds": 0.05}, config) == "rested"
    wall = time.perf_counter() - t0
    with pytest.raises(RuntimeError, match="no"):
        broken.invoke({"x": 1}, config)
    ok, failed = registry.records
    assert ok["tool"] == "nap" and ok["status"] == "ok" and ok["session_id"] == "exec-1"
    assert 0.049 < ok["duration"] < wall and ok["output_size"] == len("rested")
    assert failed["status"] == "error" and failed["error_type"] == "RuntimeError"


def test_async_and_parallel_runs_are_kept_apart() -> None:
    registry = FakeRegistry()
    handler = LampsToolCallbackHandler(registry=registry, session_id="fixed")

    async def both() -> None:
        config = {"callbacks": [handler]}
        await asyncio.gather(
            nap.ainvoke({"seconds": 0.1}, config), nap.ainvoke({"seconds": 0.0}, config)
        )

    asyncio.run(both())
    durations = sorted(r["duration"] for r in registry.records)
    assert durations[0] < durations[1] and durations[1] >= 0.09
    assert {r["session_id"] for r in registry.records} == {"fixed"}


def test_default_session_is_the_calling_run() -> None:
    registry = FakeRegistry()
    nap.invoke({"seconds": 0.0}, {"callbacks": [LampsToolCallbackHandler(registry=registry)]})
    assert registry.records[0]["session_id"].startswith("run-")


def test_shares_the_middlewares_planner() -> None:
    registry = FakeRegistry()
    middleware = LampsMiddleware(registry=registry)
    handler = LampsToolCallbackHandler(planner=middleware.planner)
    nap.invoke({"seconds": 0.0}, {"callbacks": [handler]})
    assert len(registry.records) == 1


def test_validates() -> None:
    with pytest.raises(ValueError):
        LampsToolCallbackHandler()
    with pytest.raises(ValueError):
        LampsToolCallbackHandler(registry=FakeRegistry(), session_id="")
