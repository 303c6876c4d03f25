"""Repeated runs as one row: the median and spread of each metric, and differences that say "≈"
when they are smaller than the spread.

The repeats are seeds in the simulator and rounds on a real engine.  A difference between two
rows is reported only when it is larger than the spread (max − min) of either row's repeats;
otherwise it is "≈" (no measured difference).  With one repeat there is no spread and the
difference is printed as it is: a single run cannot tell a difference from noise, and the tables
say how many repeats they have.  A row that is unstable (or compared with an unstable baseline)
prints no difference at all: its means depend on the length of the window.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lamps_agent.metrics import RunSummary

APPROX = "≈"
UNSTABLE = "unstable"


@dataclass(frozen=True, slots=True)
class Spread:
    """Median, min and max of one metric over the repeats."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        clean = [v for v in values if math.isfinite(v)]
        if not clean:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))

    @property
    def width(self) -> float:
        return self.high - self.low

    def text(self, fmt: str = ".2f") -> str:
        """``12.34`` for one repeat, ``12.34 (11.90–12.80)`` for several."""
        if self.n == 0:
            return "—"
        if self.n == 1:
            return format(self.median, fmt)
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"


METRICS: dict[str, Callable[[RunSummary], float]] = {
    "e2e_mean": lambda s: s.e2e.mean,
    "e2e_p99": lambda s: s.e2e.p99,
    "ttft_mean": lambda s: s.ttft.mean,
    "engine_mean": lambda s: s.engine_time.mean,
    "recomputed": lambda s: float(s.recomputed_tokens),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One (policy, predictor, qps) over its repeats."""

    policy: str
    predictor: str
    qps: float
    samples: tuple[RunSummary, ...]
    stable: bool | None = None  # None: not judged (a real-engine run)
    alone_e2e: float = math.nan  # the contention-free bound, mean over the measured programs
    simulated: int = 0  # programs per repeat that arrived (median)
    measured: int = 0  # ... and were measured

    def spread(self, metric: str) -> Spread:
        return Spread.of([METRICS[metric](s) for s in self.samples])

    @property
    def label(self) -> str:
        return (
            self.policy
            if self.predictor in ("oracle", "hints")
            else f"{self.policy} ({self.predictor})"
        )


def difference(row: Row, base: Row, metric: str) -> str:
    """How much lower ``row`` is than ``base`` in percent (negative: higher), "≈" when the
    medians differ by less than either row's spread, "unstable" when either is."""
    if row.stable is False or base.stable is False:
        return UNSTABLE
    r, b = row.spread(metric), base.spread(metric)
    if r.n == 0 or b.n == 0 or not b.median:
        return "—"
    if row is base:
        return "—"
    if min(r.n, b.n) > 1 and abs(r.median - b.median) <= max(r.width, b.width):
        return APPROX
    return f"{100.0 * (b.median - r.median) / b.median:+.1f}%"


def baseline_rows(
    rows: Sequence[Row], policy: str, predictor: str | None = None
) -> dict[tuple[float, str], Row]:
    """The baseline policy's row per (qps, predictor), with ``(qps, "*")`` its first predictor;
    with ``predictor``, only that predictor's row, for every row at its qps."""
    out: dict[tuple[float, str], Row] = {}
    for r in rows:
        if r.policy != policy:
            continue
        if predictor is None:
            out[(r.qps, r.predictor)] = r
            out.setdefault((r.qps, "*"), r)
        elif r.predictor == predictor:
            out[(r.qps, "*")] = r
    return out


def base_of(row: Row, bases: dict[tuple[float, str], Row]) -> Row | None:
    return bases.get((row.qps, row.predictor)) or bases.get((row.qps, "*"))


def group(
    summaries: Sequence[RunSummary],
    *,
    stable: Sequence[bool | None] | None = None,
    alone: Sequence[float] | None = None,
    simulated: Sequence[int] | None = None,
    measured: Sequence[int] | None = None,
) -> list[Row]:
    """Rows from runs, in first-seen order of (policy, predictor, qps); a row is stable only if
    every one of its repeats is."""
    keys: dict[tuple[str, str, float], list[int]] = {}
    for i, s in enumerate(summaries):
        keys.setdefault((s.policy, s.predictor, s.qps), []).append(i)
    rows = []
    for (policy, predictor, qps), idx in keys.items():
        verdicts = [stable[i] for i in idx] if stable is not None else [None]
        judged = [v for v in verdicts if v is not None]
        rows.append(
            Row(
                policy=policy,
                predictor=predictor,
                qps=qps,
                samples=tuple(summaries[i] for i in idx),
                stable=all(judged) if judged else None,
                alone_e2e=statistics.median(alone[i] for i in idx) if alone else math.nan,
                simulated=int(statistics.median(simulated[i] for i in idx)) if simulated else 0,
                measured=int(statistics.median(measured[i] for i in idx)) if measured else 0,
            )
        )
    return rows
