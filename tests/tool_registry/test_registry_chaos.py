"""The short form of ``benchmarks/chaos.py registry``: processes and threads recording with unique
markers, one writer SIGKILLed and one SIGTERMed mid-run, 1 % poisoned records, a corrupt orphaned
spill file; nothing lost, nothing duplicated, the SQLite file intact.  The full form (16 x 4,
>= 200,000 calls, PostgreSQL stopped for 20 s) is in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[2] / "benchmarks" / "chaos.py"


def run_chaos(backend: str, tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    out = tmp_path / f"{backend}.json"
    argv = [
        sys.executable,
        str(CHAOS),
        "registry",
        "--backend",
        backend,
        "--processes",
        "4",
        "--threads",
        "2",
        "--calls",
        "8000",
        "--duration",
        "6",
        "--pg-stop",
        "0",  # the CI server is shared by the other tests: not stopped here
        "--json",
        str(out),
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert out.exists(), done.stderr[-3000:]
    (outcome,) = json.loads(out.read_text())
    assert done.returncode == 0, (outcome, done.stdout)
    return dict(outcome)


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_chaos_short_form_loses_and_duplicates_nothing(backend: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    if backend == "postgres" and not env.get("LAMPS_TEST_POSTGRES_URL"):
        if env.get("LAMPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("LAMPS_REQUIRE_POSTGRES=1 but LAMPS_TEST_POSTGRES_URL is not set")
        pytest.skip("LAMPS_TEST_POSTGRES_URL not set")
    outcome = run_chaos(backend, tmp_path, env)
    assert outcome["lost"] == 0 and outcome["duplicated"] == 0 and outcome["unexpected"] == 0
    assert outcome["rejected"] > 0 and outcome["aggregates_match"] is True
    assert outcome["quarantined"] == 3 and outcome["orphans_replayed"] == 100
    assert outcome["integrity"] in ("ok", "n/a")
