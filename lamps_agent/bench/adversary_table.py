"""The adversarial table: liars, honest programs and each tenant apart, against the all-honest run.

A row is (policy, predictor, qps, lie); each cell is the median over seeds of the measured
programs' mean and P99 E2E in that group, and ``×`` the median over seeds of its ratio to the same
group (the same programs) in the run where nobody lies (``lie none``, same seed).  The issue's
targets read off it: liars' ``×`` ≥ 0.95 (they gain ≤ 5 %), honest ``×`` ≤ 1.03.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.table import Table

from lamps_agent.bench.runner import Point
from lamps_agent.metrics import Distribution, RequestMetrics

LIARS, HONEST = "liars", "honest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One group of one row: medians over seeds, and the ratios to the all-honest run."""

    mean: float
    p99: float
    mean_ratio: float
    p99_ratio: float
    count: int  # programs in the group, summed over seeds


@dataclass(frozen=True, slots=True, kw_only=True)
class AdversaryRow:
    policy: str
    predictor: str
    qps: float
    lie: str
    cells: dict[str, Cell]


def groups_of(point: Point) -> dict[str, Distribution]:
    """E2E of the point's measured programs, by group: liars, honest, each tenant (where
    there are several)."""
    measured = point.window.measured(point.result.requests)
    groups: dict[str, list[RequestMetrics]] = {LIARS: [], HONEST: []}
    several = len(set(point.tenants.values())) > 1  # one tenant: its column repeats "all"
    for m in measured:
        groups[LIARS if m.program_id in point.liars else HONEST].append(m)
        tenant = point.tenants.get(m.program_id)
        if tenant is not None and several:
            groups.setdefault(f"tenant {tenant}", []).append(m)
    return {name: Distribution.of([m.e2e for m in ms]) for name, ms in groups.items() if ms}


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def adversary_rows(points: Sequence[Point]) -> list[AdversaryRow]:
    by_seed = {
        (p.spec.policy, p.spec.predictor, p.spec.qps, p.spec.seed, p.spec.lie): groups_of(p)
        for p in points
    }
    keys = sorted({(p.spec.policy, p.spec.predictor, p.spec.qps, p.spec.lie) for p in points})
    rows = []
    for policy, predictor, qps, lie in keys:
        seeds = sorted({p.spec.seed or 0 for p in points if p.spec.lie == lie})
        runs = [by_seed.get((policy, predictor, qps, s, lie)) for s in seeds]
        honest = [by_seed.get((policy, predictor, qps, s, "none")) for s in seeds]
        names = sorted({n for run in runs if run for n in run})
        cells = {}
        for name in names:
            pairs = [
                (r[name], (h or {}).get(name))
                for r, h in zip(runs, honest, strict=True)
                if r and name in r
            ]
            cells[name] = Cell(
                mean=_median([d.mean for d, _ in pairs]),
                p99=_median([d.p99 for d, _ in pairs]),
                mean_ratio=_median([d.mean / b.mean if b else math.nan for d, b in pairs]),
                p99_ratio=_median([d.p99 / b.p99 if b else math.nan for d, b in pairs]),
                count=len(pairs),
            )
        rows.append(AdversaryRow(policy=policy, predictor=predictor, qps=qps, lie=lie, cells=cells))
    return rows


def _fmt(value: float, ratio: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.1f}" if math.isnan(ratio) else f"{value:.1f} ×{ratio:.3f}"


def adversary_table(rows: Sequence[AdversaryRow]) -> Table:
    names = sorted({n for r in rows for n in r.cells}, key=lambda n: (n != LIARS, n != HONEST, n))
    table = Table(box=box.SIMPLE_HEAD, title="liars, honest programs and tenants (E2E s)")
    for col in ("policy", "pred.", "qps", "lie"):
        table.add_column(col)
    for name in names:
        table.add_column(f"{name} mean", justify="right")
        table.add_column(f"{name} P99", justify="right")
    for r in rows:
        cells = []
        for name in names:
            c = r.cells.get(name)
            cells += [_fmt(c.mean, c.mean_ratio), _fmt(c.p99, c.p99_ratio)] if c else ["—", "—"]
        table.add_row(r.policy, r.predictor, f"{r.qps:g}", r.lie, *cells)
    return table


def adversary_markdown(rows: Sequence[AdversaryRow]) -> str:
    names = sorted({n for r in rows for n in r.cells}, key=lambda n: (n != LIARS, n != HONEST, n))
    head = ["policy", "predictor", "qps", "lie"]
    for name in names:
        head += [f"{name} mean", f"{name} P99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.policy, r.predictor, f"{r.qps:g}", r.lie]
        for name in names:
            c = r.cells.get(name)
            cells += [_fmt(c.mean, c.mean_ratio), _fmt(c.p99, c.p99_ratio)] if c else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
