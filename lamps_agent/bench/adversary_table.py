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

LIARS, HONEST, TENANT = "liars", "honest", "tenant "


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
            groups.setdefault(f"{TENANT}{tenant}", []).append(m)
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


def _ratio(c: Cell | None, *, p99: bool = False) -> str:
    ratio = (c.p99_ratio if p99 else c.mean_ratio) if c else math.nan
    return "—" if math.isnan(ratio) else f"×{ratio:.3f}"


def _tenants_p99(r: AdversaryRow) -> str:
    """The tenants' P99 ratios as their range and the worst tenant (a column per tenant does
    not fit 80 columns past two or three tenants)."""
    ratios = {
        n.removeprefix(TENANT): c.p99_ratio
        for n, c in r.cells.items()
        if n.startswith(TENANT) and not math.isnan(c.p99_ratio)
    }
    if not ratios:
        return "—"
    worst = max(ratios, key=lambda n: ratios[n])
    return f"×{min(ratios.values()):.3f}–{ratios[worst]:.3f} ({worst})"


def adversary_table(rows: Sequence[AdversaryRow], *, wide: bool = False) -> Table:
    """The table for the console: by default the ratios to the all-honest run that the targets
    read (liars' mean, honest mean and P99, the tenants' P99 as a range), within 80 columns;
    ``wide``: every group's mean and P99 with its ratio (``adversary.md`` holds that one
    whatever the console shows)."""
    if wide:
        return _wide_table(rows)
    table = Table(box=box.SIMPLE_HEAD, title="liars, honest programs and tenants: E2E × all-honest")
    for col in ("policy", "qps", "lie"):
        table.add_column(col)
    for col in ("liars", "honest", "honest P99"):  # what the targets read (module docstring)
        table.add_column(col, justify="right")
    tenants = any(n.startswith(TENANT) for r in rows for n in r.cells)
    if tenants:
        table.add_column("tenants' P99 (worst)", justify="right")
    for r in rows:
        liars, honest = r.cells.get(LIARS), r.cells.get(HONEST)
        cells = [_ratio(liars), _ratio(honest), _ratio(honest, p99=True)]
        table.add_row(
            r.policy, f"{r.qps:g}", r.lie, *cells, *([_tenants_p99(r)] if tenants else [])
        )
    return table


def _group_names(rows: Sequence[AdversaryRow]) -> list[str]:
    """Every group of the rows: liars, honest, then the tenants."""
    return sorted({n for r in rows for n in r.cells}, key=lambda n: (n != LIARS, n != HONEST, n))


def _group_cells(r: AdversaryRow, names: Sequence[str]) -> list[str]:
    """Each group's mean and P99 with its ratio, ``—`` where the row has no such group."""
    cells: list[str] = []
    for name in names:
        c = r.cells.get(name)
        cells += [_fmt(c.mean, c.mean_ratio), _fmt(c.p99, c.p99_ratio)] if c else ["—", "—"]
    return cells


def _wide_table(rows: Sequence[AdversaryRow]) -> Table:
    names = _group_names(rows)
    table = Table(box=box.SIMPLE_HEAD, title="liars, honest programs and tenants (E2E s)")
    for col in ("policy", "pred.", "qps", "lie"):
        table.add_column(col)
    for name in names:
        table.add_column(f"{name} mean", justify="right")
        table.add_column(f"{name} P99", justify="right")
    for r in rows:
        table.add_row(r.policy, r.predictor, f"{r.qps:g}", r.lie, *_group_cells(r, names))
    return table


def adversary_markdown(rows: Sequence[AdversaryRow]) -> str:
    names = _group_names(rows)
    head = ["policy", "predictor", "qps", "lie"]
    for name in names:
        head += [f"{name} mean", f"{name} P99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.policy, r.predictor, f"{r.qps:g}", r.lie, *_group_cells(r, names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
