"""The folder a benchmark writes into: checked before any simulation runs, never overwritten
silently.

A run's files are the ``RESULT_FILES`` below.  A folder that already holds one of them holds an
earlier run: it is refused unless the caller asks to overwrite, and then the earlier run's files
are removed first, so no stale plot survives next to the new numbers.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

RESULT_FILES = (
    "results.csv",
    "results.json",
    "results.md",
    "latency_vs_qps.png",
    "kv_timeline.png",
    "unloaded.json",
)
DEFAULT_ROOT = Path("results")


class OutputDirError(ValueError):
    """The results folder cannot be used (not writable, or it holds an earlier run)."""


def default_out_dir(trace_name: str, *, now: datetime | None = None) -> Path:
    """``results/<trace>-<UTC time>``: a fresh folder per run, so runs never collide."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    base = DEFAULT_ROOT / f"{trace_name}-{stamp}"
    candidate, n = base, 2
    while candidate.exists():  # two runs in the same second
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def earlier_results(out: Path) -> list[str]:
    """The result files of an earlier run in ``out``."""
    return [name for name in RESULT_FILES if (out / name).exists()]


def prepare_out_dir(out: Path, *, overwrite: bool, flag: str = "--out") -> Path:
    """Create ``out`` if needed and prove it writable; refuse one that holds an earlier run unless
    ``overwrite`` (then delete that run's files).  Errors name ``flag``."""
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{flag} {out}: is a file, not a folder")
    earlier = earlier_results(out) if out.is_dir() else []
    if earlier and not overwrite:
        raise OutputDirError(
            f"{flag} {out}: holds an earlier run ({', '.join(earlier)}); "
            "choose another folder or pass --overwrite"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise OutputDirError(f"{flag} {out}: cannot write there ({exc.strerror or exc})") from None
    for name in earlier:
        (out / name).unlink()
    return out
