"""The registry's contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lamps_agent.predictors.base import DEFAULT_TOOL_DURATION, DurationSource
from tool_registry import CallStatus, ToolRegistry
from tool_registry.store import Store

MakeRegistry = Callable[..., ToolRegistry]


def count_calls(reg: ToolRegistry, tool: str | None = None) -> int:
    store: Store = reg._store
    return reg._writer.call(store.count_calls(tool))


@dataclass
class FakeLangChainTool:
    """Shaped like langchain_core.tools.BaseTool: name, description, metadata."""

    name: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __call__(self, query: str) -> str:
        return query


def test_register_get_list(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)

    def search(query: str) -> str:
        """Search the web.

        Longer text."""
        return query

    info = reg.register(search, duration_hint=2.0, api_type="search")
    assert (info.name, info.description, info.api_type, info.duration_hint) == (
        "search",
        "Search the web.",
        "search",
        2.0,
    )
    assert reg.get("search") == info
    assert reg.get("missing") is None
    lc = FakeLangChainTool("wiki", "Look up Wikipedia", {"duration_hint": 1.5, "api_type": "qa"})
    assert reg.register(lc).duration_hint == 1.5
    assert reg.register(lc, duration_hint=3.0).duration_hint == 3.0
    assert [t.name for t in reg.list()] == ["search", "wiki"]


def test_reregistering_updates_only_given_fields(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)
    first = reg.register("calc", duration_hint=0.1, api_type="math", description="adds")
    again = reg.register("calc", duration_hint=0.2)
    assert (again.duration_hint, again.api_type, again.description) == (0.2, "math", "adds")
    assert again.registered_at == first.registered_at


def test_decorator_returns_the_function(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)

    @reg.tool(duration_hint=2.0, api_type="search")
    def lookup(query: str) -> str:
        return query.upper()

    assert lookup("x") == "X"
    info = reg.get("lookup")
    assert info is not None and info.duration_hint == 2.0 and info.api_type == "search"


def test_records_become_stats_and_estimates(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)
    reg.register("search", duration_hint=10.0)
    for i in range(1000):
        reg.record("search", duration=1.0 + (i % 2), session_id="s1", input_size=10)
    reg.record("calc", duration=0.01, status=CallStatus.ERROR, error_type="ZeroDivisionError")
    reg.flush(timeout=30)
    assert reg.pending == 0
    (search,) = reg.stats("search")
    assert (search.count, search.error_count) == (1000, 0)
    assert search.mean == pytest.approx(1.5)
    assert (search.min, search.max) == (1.0, 2.0)
    (calc,) = reg.stats("calc")
    assert (calc.count, calc.error_count, calc.error_rate) == (1, 1, 1.0)
    assert [s.tool for s in reg.stats()] == ["calc", "search"]
    est = reg.estimate("search")
    assert est.count == 1000 and est.confidence > 0.98
    assert est.mean == pytest.approx((1000 * 1.5 + 5 * 10.0) / 1005)
    assert 1.0 <= est.p50 <= est.p90 <= est.p99 <= 2.1
    assert count_calls(reg) == 1001
    assert reg.get("calc") is not None  # recorded tools are registered on first write
    calls = list(reg.iter_calls("calc", page_size=1))
    assert [(c.status, c.error_type) for c in calls] == [(CallStatus.ERROR, "ZeroDivisionError")]


def test_unknown_tool_estimate_is_the_default(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)
    source: DurationSource = reg
    est = source.estimate("never-seen")
    assert (est.mean, est.count, est.confidence) == (DEFAULT_TOOL_DURATION, 0, 0.0)
    assert reg.estimate("").mean == DEFAULT_TOOL_DURATION


def test_aggregates_survive_a_restart(db_url: str, make_registry: MakeRegistry) -> None:
    with make_registry(db_url) as reg:
        reg.register("search", duration_hint=3.0)
        for _ in range(50):
            reg.record("search", duration=0.5)
    reg2 = make_registry(db_url)
    est = reg2.estimate("search")
    assert est.count == 50
    assert est.mean == pytest.approx((50 * 0.5 + 5 * 3.0) / 55)


def test_refresh_sees_other_writers(db_url: str, make_registry: MakeRegistry) -> None:
    reader = make_registry(db_url)
    assert reader.estimate("search").count == 0
    with make_registry(db_url) as writer:
        writer.register("search", duration_hint=4.0)
        for _ in range(10):
            writer.record("search", duration=2.0)
    reader.refresh()
    est = reader.estimate("search")
    assert est.count == 10
    assert est.mean == pytest.approx((10 * 2.0 + 5 * 4.0) / 15)


def test_time_trigger_writes_without_flush(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url, batch_size=10_000, flush_interval=0.02)
    reg.record("search", duration=1.0)
    for _ in range(200):
        if reg.estimate("search").count == 1:
            break
        threading.Event().wait(0.02)
    assert reg.estimate("search").count == 1


def test_concurrent_threads_lose_and_duplicate_nothing(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url, batch_size=64, max_buffer=1_000_000)
    threads, per_thread = 8, 1000

    def work(index: int) -> None:
        for i in range(per_thread):
            reg.record(f"tool{index % 3}", duration=0.001 * (i % 7), session_id=str(index))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    reg.flush(timeout=60)
    total = threads * per_thread
    assert sum(s.count for s in reg.stats()) == total
    assert count_calls(reg) == total
    assert len({c.id for c in reg.iter_calls()}) == total


def test_asyncio_tasks_and_async_api(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url, batch_size=32)

    async def agent(index: int) -> None:
        for _ in range(100):
            reg.record("fetch", duration=0.01, session_id=f"agent-{index}")
            await asyncio.sleep(0)

    async def main() -> None:
        await reg.aregister("fetch", duration_hint=0.02)
        await asyncio.gather(*(agent(i) for i in range(40)))
        await reg.aflush(timeout=60)
        (stats,) = await reg.astats("fetch")
        assert stats.count == 4000
        await reg.aclose()

    asyncio.run(main())
    assert count_calls(make_registry(db_url)) == 4000


def test_closed_registry_refuses_records(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url)
    reg.close()
    reg.close()  # idempotent
    from tool_registry import RegistryClosedError

    with pytest.raises(RegistryClosedError):
        reg.record("search", duration=1.0)
