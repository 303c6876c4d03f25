"""Repeated runs as one row: the median and spread of each metric, and differences that say "≈"
when they are smaller than the spread.

The repeats are seeds in the simulator and rounds on a real engine.  A difference between two
rows is reported only when it is larger than the spread (max − min) of either row's repeats;
otherwise it is "≈" (no measured difference).  With one repeat there is no spread and the
difference is printed as it is: a single run cannot tell a difference from noise, and the tables
say how many repeats they have.  A row that is unstable prints no difference at all: its means
depend on the length of the window; a stable row compared with an unstable baseline prints "n/a".

**One verdict per row.**  :attr:`Row.stable` (stable on every repeat) is the only stability
verdict the reports read: the table's stable column, the differences, the notes under the table
(:func:`stability_notes`, with the reasons kept in :attr:`Row.reasons`) and the plots' marks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lamps_agent.metrics import RunSummary

APPROX = "≈"
UNSTABLE = "unstable"  # the row itself is unstable
BASE_UNSTABLE = "n/a"  # the row is stable, the baseline it is compared with is not


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
    stable: bool | None = None  # None: not judged (a real-engine run); the one verdict
    reasons: tuple[str, ...] = ()  # why it is unstable: one line per unstable repeat
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
    medians differ by less than either row's spread; "unstable" when ``row`` is, "n/a" when only
    ``base`` is."""
    if row.stable is False:
        return UNSTABLE
    if base.stable is False:
        return BASE_UNSTABLE
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


def stability_notes(rows: Sequence[Row], bases: dict[tuple[float, str], Row]) -> list[str]:
    """The lines under a table, from each row's verdict: why each unstable row is, and which
    stable rows print "n/a" because their baseline is unstable."""
    notes = []
    for row in rows:
        if row.stable is False:
            why = "; ".join(row.reasons) or "no steady state"
            notes.append(f"unstable: {row.label} qps {row.qps:g}: {why}")
        elif row.stable is None and row.reasons:  # a simulated row too lightly loaded to judge
            notes.append(f"not judged: {row.label} qps {row.qps:g}: {'; '.join(row.reasons)}")
    orphans: dict[tuple[float, str], list[str]] = {}  # (qps, baseline): its stable rows
    for row in rows:
        base = base_of(row, bases)
        if row.stable is not False and base is not None and base.stable is False:
            orphans.setdefault((row.qps, base.label), []).append(row.label)
    for (qps, base_label), labels in orphans.items():
        notes.append(
            f"{BASE_UNSTABLE}: at qps {qps:g} the baseline {base_label} is unstable; "
            f"{', '.join(labels)} {'is' if len(labels) == 1 else 'are'} stable, with nothing "
            "steady to compare with"
        )
    return notes


def group(
    summaries: Sequence[RunSummary],
    *,
    stable: Sequence[bool | None] | None = None,
    reasons: Sequence[str] | None = None,
    alone: Sequence[float] | None = None,
    simulated: Sequence[int] | None = None,
    measured: Sequence[int] | None = None,
) -> list[Row]:
    """Rows from runs, in first-seen order of (policy, predictor, qps); a row is stable only if
    every one of its repeats is, and ``reasons`` (per run) of its unstable repeats say why."""
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
                reasons=tuple(
                    reasons[i]
                    for i in idx
                    if reasons is not None and stable and stable[i] is not True
                ),
                alone_e2e=statistics.median(alone[i] for i in idx) if alone else math.nan,
                simulated=int(statistics.median(simulated[i] for i in idx)) if simulated else 0,
                measured=int(statistics.median(measured[i] for i in idx)) if measured else 0,
            )
        )
    return rows
