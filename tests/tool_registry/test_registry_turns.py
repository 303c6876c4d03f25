"""Model turns (``record_turn`` / ``iter_turns``), run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tool_registry import ToolRegistry, TurnRecord
from tool_registry.types import Row
from tool_registry.validation import MAX_PROMPT_TEXT

MakeRegistry = Callable[..., ToolRegistry]


def count_turns(reg: ToolRegistry) -> int:
    return reg._writer.call(reg._store.count_turns())


def test_turns_round_trip_with_exact_counts(db_url: str, make_registry: MakeRegistry) -> None:
    reg = make_registry(db_url, batch_size=64)
    for i in range(300):
        reg.record_turn(
            agent=f"agent{i % 3}",
            step=i % 5,
            output_tokens=10 + i,
            prompt_tokens=100 + i,
            tool=None if i % 4 == 0 else "search",
            session_id=f"s{i // 5}",
        )
    reg.flush(timeout=30)
    assert reg.pending == 0 and count_turns(reg) == 300
    turns = list(reg.iter_turns(page_size=7))
    assert len(turns) == 300 and len({t.id for t in turns}) == 300
    assert sorted(t.output_tokens for t in turns) == list(range(10, 310))
    first = min(turns, key=lambda t: t.output_tokens)
    assert (first.agent, first.step, first.tool, first.prompt_tokens, first.session_id) == (
        "agent0",
        0,
        None,
        100,
        "s0",
    )
    assert all(t.prompt_text is None for t in turns)
    assert all(isinstance(t, TurnRecord) and t.created_at > 0 for t in turns)
    assert len(list(reg.iter_turns(agent="agent1", page_size=10))) == 100
    assert reg.stats() == []  # turns are not tool calls: no call statistics, no tools registered
    assert reg.list() == []


def test_prompt_text_is_stored_only_when_given_and_truncated(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url)
    long = "".join(f"word{i} " for i in range(1_000))  # ~8,900 characters
    reg.record_turn(agent="a", step=0, output_tokens=5)
    reg.record_turn(agent="b", step=1, output_tokens=6, prompt_text="short prompt")
    reg.record_turn(agent="c", step=2, output_tokens=7, prompt_text=long)
    reg.record_turn(agent="d", step=3, output_tokens=8, prompt_text="nul\x00 and \ud800 lone")
    reg.flush(timeout=30)
    texts = {t.agent: t.prompt_text for t in reg.iter_turns()}
    assert texts["a"] is None
    assert texts["b"] == "short prompt"
    assert texts["c"] == long[-MAX_PROMPT_TEXT:] and len(long) > MAX_PROMPT_TEXT
    assert texts["d"] == "nul\ufffd and \ufffd lone"  # storable on both databases


def test_concurrent_writers_of_calls_and_turns_lose_nothing(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url, batch_size=32, max_buffer=1_000_000)
    threads, per_thread = 8, 250

    def work(index: int) -> None:
        for i in range(per_thread):
            reg.record_turn(agent=f"agent{index}", step=i, output_tokens=i + 1, session_id=str(i))
            reg.record("search", duration=0.01)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    reg.flush(timeout=60)
    total = threads * per_thread
    assert count_turns(reg) == total
    assert len({t.id for t in reg.iter_turns()}) == total
    assert reg.stats("search")[0].count == total
    assert sum(1 for _ in reg.iter_turns(agent="agent3")) == per_thread


def test_turns_survive_retries_and_overflow(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    reg = make_registry(db_url, batch_size=5, max_buffer=10)
    gate = threading.Event()
    store = reg._store
    real = store.write_batch
    seen = {"writes": 0}

    async def flaky(rows: Sequence[Row], *, may_exist: bool = False) -> Any:
        if not gate.is_set():
            raise OperationalError("INSERT", {}, ConnectionResetError("injected: down"))
        result = await real(rows, may_exist=may_exist)
        seen["writes"] += 1
        if seen["writes"] <= 2:  # committed, but the acknowledgement is lost: retried
            raise OperationalError("COMMIT", {}, ConnectionResetError("injected: ack lost"))
        return result

    store.write_batch = flaky  # type: ignore[method-assign]
    for i in range(60):
        reg.record_turn(agent="a", step=i, output_tokens=i + 1, prompt_text=f"p{i}")
        reg.record("search", duration=0.1)
    assert reg.num_spilled >= 90 and reg.pending == 120
    gate.set()
    reg.flush(timeout=30)
    assert reg.pending == 0 and list(spill_dir.iterdir()) == []
    turns = list(reg.iter_turns())
    assert sorted(t.step for t in turns) == list(range(60))
    assert {t.prompt_text for t in turns} == {f"p{i}" for i in range(60)}
    assert reg.stats("search")[0].count == 60


def test_turns_left_at_close_are_replayed_by_the_next_registry(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url, batch_size=10)
    store = reg._store

    async def down(rows: Sequence[Row], *, may_exist: bool = False) -> Any:
        raise OperationalError("INSERT", {}, ConnectionResetError("injected: down"))

    store.write_batch = down  # type: ignore[method-assign]
    for i in range(25):
        reg.record_turn(agent="a", step=i, output_tokens=3, tool="calc", session_id="s")
    reg.close(timeout=0.3)
    assert reg.num_spilled == 25
    nxt = make_registry(db_url)
    nxt.flush(timeout=30)
    assert sorted(t.step for t in nxt.iter_turns()) == list(range(25))
    assert {(t.tool, t.session_id) for t in nxt.iter_turns()} == {("calc", "s")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent": ""}, "agent must not be empty"),
        ({"agent": "  "}, "agent must not be empty"),
        ({"agent": None}, "agent must be a string"),
        ({"step": -1}, "step"),
        ({"step": 1.0}, "step must be an int"),
        ({"step": True}, "step must be an int"),
        ({"output_tokens": -3}, "output_tokens"),
        ({"output_tokens": 10**9}, "output_tokens"),
        ({"output_tokens": math.nan}, "output_tokens"),
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"prompt_tokens": 10**12}, "prompt_tokens"),
        ({"tool": ""}, "tool name"),
        ({"session_id": "x" * 300}, "session_id"),
        ({"prompt_text": b"bytes"}, "prompt_text"),
    ],
)
def test_record_turn_rejects_bad_values(
    sqlite_url: str, make_registry: MakeRegistry, kwargs: dict[str, object], message: str
) -> None:
    reg = make_registry(sqlite_url)
    fields: dict[str, object] = {"agent": "a", "step": 0, "output_tokens": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        reg.record_turn(**fields)  # type: ignore[arg-type]
    assert reg.pending == 0


def test_a_database_at_the_first_revision_is_upgraded(
    sqlite_url: str, make_registry: MakeRegistry
) -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from tool_registry.schema import alembic_config

    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    engine.dispose()
    reg = make_registry(sqlite_url)
    reg.record("search", duration=1.0)
    reg.record_turn(agent="a", step=0, output_tokens=4)
    reg.flush(timeout=30)
    assert count_turns(reg) == 1 and reg.stats("search")[0].count == 1
