"""Poisoned records: text no database stores, numbers out of any range, wrong types.

One such record used to wedge the writer for good (retried forever, every later record stuck
behind it).  Now bad input is a ``ValueError`` or is sanitised and counted at ``record()``, and a
row the database still rejects is split off into the dead-letter file while every other row lands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tool_registry import ToolRegistry
from tool_registry.types import Row

MakeRegistry = Callable[..., ToolRegistry]


@pytest.mark.parametrize(
    "text", ["\ud800", "a\udfffb", "nul\x00here", "\x00", "mixed \u00e9\ud83d"], ids=repr
)
def test_unstorable_text_is_sanitised_and_counted(
    db_url: str, make_registry: MakeRegistry, text: str
) -> None:
    reg = make_registry(db_url)
    reg.record("search", duration=1.0, session_id=text, error_type=text)
    reg.record(f"tool-{text}", duration=1.0)
    reg.record("search", duration=2.0)
    reg.flush(timeout=10)
    assert reg.num_sanitised == 2 and reg.num_dead_lettered == 0
    calls = list(reg.iter_calls())
    cleaned = "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)
    assert len(calls) == 3
    assert {c.session_id for c in calls} == {None, cleaned}
    assert {c.error_type for c in calls} == {None, cleaned}
    assert {c.tool for c in calls} == {"search", f"tool-{cleaned}"}


def test_a_row_the_database_rejects_is_dead_lettered_and_the_rest_lands(
    db_url: str, make_registry: MakeRegistry, spill_dir: Path
) -> None:
    """Bypass record()'s checks (as a spill file of an older version would) with a row neither
    database can store: a lone surrogate (SQLite, PostgreSQL) and a NUL (PostgreSQL)."""
    reg = make_registry(db_url, batch_size=64)
    writer = reg._writer
    bad = ("search", "bad\x00\ud800", 10.0, 1.0, "ok", None, None, None)
    with writer._lock:  # one batch: 100 good rows around the bad one
        for i in range(100):
            writer.submit(("search", f"s{i}", 10.0, 1.0, "ok", None, None, None))
            if i == 40:
                writer.submit(bad)
    reg.flush(timeout=60)
    assert reg.num_dead_lettered == 1
    (stats,) = reg.stats("search")
    assert stats.count == 100
    dead = spill_dir / f"{writer._spill.key}.dead-letter.jsonl"
    (line,) = dead.read_text().splitlines()
    assert json.loads(line)[2] == "bad\x00\ud800"
    assert dead.stat().st_mode & 0o777 == 0o600
    reg.record("search", duration=1.0)  # the registry is not wedged
    reg.flush(timeout=10)
    assert reg.stats("search")[0].count == 101


def test_a_poisoned_batch_in_a_spill_file_does_not_wedge_the_next_registry(
    sqlite_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(sqlite_url, batch_size=10)
    store = reg._store
    real = store.write_batch
    rejected: list[str] = []

    async def picky(rows: Sequence[Row], *, may_exist: bool = False) -> Any:
        from sqlalchemy.exc import DataError

        for row in rows:
            if row[1] == "poison":
                rejected.append(row[0])
                raise DataError("INSERT", {}, ValueError("22021: invalid byte sequence"))
        return await real(rows, may_exist=may_exist)

    store.write_batch = picky  # type: ignore[method-assign]
    for i in range(50):
        reg.record("poison" if i in (3, 27) else "fine", duration=0.5)
    reg.flush(timeout=30)
    assert reg.num_dead_lettered == 2
    assert reg.stats("fine")[0].count == 48


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 10**400}, "finite number of seconds"),
        ({"duration": 1.0, "started_at": 10**400}, "started_at"),
        ({"duration": 1.0, "started_at": 1e308}, "before the year 2100"),
        ({"duration": 1.0, "started_at": 1.7e12}, "milliseconds"),
        ({"duration": 1.0, "status": ["ok"]}, "status"),
        ({"duration": 1.0, "status": {"ok": 1}}, "status"),
        ({"duration": 1.0, "status": None}, "status"),
        ({"duration": [1.0]}, "number of seconds"),
        ({"duration": 1.0, "session_id": b"bytes"}, "session_id"),
        ({"duration": 1.0, "input_size": 10**400}, "input_size"),
        ({"duration": 1.0, "input_size": np.float64(3.0)}, "input_size"),
        ({"duration": np.float64(math.nan)}, "finite"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_every_bad_value_is_a_value_error(
    sqlite_url: str, make_registry: MakeRegistry, kwargs: dict[str, object], message: str
) -> None:
    reg = make_registry(sqlite_url)
    with pytest.raises(ValueError, match=message):
        reg.record("search", **kwargs)  # type: ignore[arg-type]
    assert reg.pending == 0


def test_numpy_scalars_are_accepted_and_stored_as_plain_numbers(
    db_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(db_url)
    reg.record(
        "search",
        duration=np.float32(1.5),
        started_at=np.float64(1_700_000_000.0),
        input_size=np.int64(12),
        output_size=np.uint16(7),
    )
    reg.record("search", duration=np.int32(2))
    reg.record_turn(agent="a", step=np.int64(1), output_tokens=np.int32(9))
    reg.flush(timeout=10)
    calls = sorted(reg.iter_calls(), key=lambda c: c.duration)
    assert [(c.duration, c.input_size, c.output_size) for c in calls] == [
        (1.5, 12, 7),
        (2.0, None, None),
    ]
    assert type(calls[0].duration) is float and calls[0].started_at == 1_700_000_000.0
    assert [(t.step, t.output_tokens) for t in reg.iter_turns()] == [(1, 9)]


def test_estimate_never_raises_and_does_not_cache_unknown_names(
    sqlite_url: str, make_registry: MakeRegistry
) -> None:
    reg = make_registry(sqlite_url)
    assert reg.estimate(["x"]).confidence == 0.0  # type: ignore[arg-type]
    assert reg.estimate({"x": 1}).count == 0  # type: ignore[arg-type]
    for i in range(10_000):
        reg.estimate(f"never-seen-{i}")
    assert len(reg._estimates) == 0
