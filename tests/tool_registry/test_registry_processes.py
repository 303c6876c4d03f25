"""Several processes writing to one registry: exact aggregates, no lost or duplicated calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tool_registry import ToolRegistry

WORKER = textwrap.dedent(
    """
    import sys
    from tool_registry import ToolRegistry
    url, spill, index, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with ToolRegistry(url, spill_dir=spill, batch_size=97) as reg:
        for i in range(count):
            reg.record(f"tool{i % 3}", duration=0.001 * (1 + (i + index) % 10), session_id=str(index))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [4])
def test_processes_write_exact_totals(
    db_url: str,
    make_registry: Callable[..., ToolRegistry],
    spill_dir: Path,
    processes: int,
) -> None:
    per_process = 2000
    # No schema yet: the processes race to create it on first use.
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(spill_dir), str(i), str(per_process)]
        )
        for i in range(processes)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    reg = make_registry(db_url)
    stats = reg.stats()
    total = processes * per_process
    assert [s.tool for s in stats] == ["tool0", "tool1", "tool2"]
    assert sum(s.count for s in stats) == total
    assert sum(1 for _ in reg.iter_calls()) == total
    expected_sum = sum(
        0.001 * (1 + (i + index) % 10) for index in range(processes) for i in range(per_process)
    )
    assert sum(s.mean * s.count for s in stats) == pytest.approx(expected_sum, rel=1e-9)
    for stat in stats:
        assert sum(reg._aggregates[stat.tool].buckets.values()) == stat.count
