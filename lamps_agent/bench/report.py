"""Tables and files from a grid of runs: reductions relative to a baseline, CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lamps_agent.metrics import RunSummary


@dataclass(frozen=True, slots=True)
class Baseline:
    """The runs the reductions are relative to: ``policy`` at the same qps, under ``predictor``
    (``None``: under the same predictor as the row being compared)."""

    policy: str
    predictor: str | None = None

    @property
    def label(self) -> str:
        return self.policy if self.predictor is None else f"{self.policy} ({self.predictor})"


@dataclass(frozen=True, slots=True)
class Reduction:
    """How much lower than the baseline, in percent (negative: higher)."""

    e2e_mean: float
    e2e_p99: float
    ttft_mean: float
    engine_mean: float
    baseline_predictor: str  # the predictor of the baseline run this row was compared with


def _pct_lower(value: float, base: float) -> float:
    if not math.isfinite(value) or not math.isfinite(base) or base == 0:
        return math.nan
    return 100.0 * (base - value) / base


def _as_baseline(baseline: Baseline | str | None) -> Baseline | None:
    return Baseline(baseline) if isinstance(baseline, str) else baseline


def reductions(summaries: Sequence[RunSummary], baseline: Baseline | str) -> dict[int, Reduction]:
    """For each summary (by index), its reduction vs the baseline at the same qps: the baseline
    policy under the baseline's predictor, or under the row's own predictor (or, if the baseline
    policy ran with one predictor only, that one)."""
    base_of = _as_baseline(baseline)
    assert base_of is not None
    base: dict[tuple[float, str], RunSummary] = {}
    for s in summaries:
        if s.policy != base_of.policy:
            continue
        if base_of.predictor is None:
            base[(s.qps, s.predictor)] = s
            base.setdefault((s.qps, "*"), s)
        elif s.predictor == base_of.predictor:
            base[(s.qps, "*")] = s
    out: dict[int, Reduction] = {}
    for i, s in enumerate(summaries):
        b = base.get((s.qps, s.predictor)) or base.get((s.qps, "*"))
        if b is None:
            continue
        out[i] = Reduction(
            e2e_mean=_pct_lower(s.e2e.mean, b.e2e.mean),
            e2e_p99=_pct_lower(s.e2e.p99, b.e2e.p99),
            ttft_mean=_pct_lower(s.ttft.mean, b.ttft.mean),
            engine_mean=_pct_lower(s.engine_time.mean, b.engine_time.mean),
            baseline_predictor=b.predictor,
        )
    return out


def _fmt_pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.1f}%"


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    cell: Callable[[RunSummary], str]
    wide_only: bool = False
    justify: str = "right"


_COLUMNS = (
    _Column("policy", lambda s: s.policy, justify="left"),
    _Column("predictor", lambda s: s.predictor, justify="left"),
    _Column("qps", lambda s: f"{s.qps:g}"),
    _Column("E2E s", lambda s: f"{s.e2e.mean:.2f}"),
    _Column("P99 s", lambda s: f"{s.e2e.p99:.2f}"),
    _Column("TTFT s", lambda s: f"{s.ttft.mean:.3f}"),
    _Column("engine s", lambda s: f"{s.engine_time.mean:.2f}", wide_only=True),
    _Column("recomputed", lambda s: f"{s.recomputed_tokens:,}"),
    _Column("swap GB", lambda s: f"{s.swapped_bytes / 1e9:.1f}", wide_only=True),
    _Column("peak KV", lambda s: f"{s.peak_kv_fraction:.0%}"),
)
_DELTAS: tuple[tuple[str, str, bool], ...] = (
    ("ΔE2E", "e2e_mean", False),
    ("ΔP99", "e2e_p99", False),
    ("ΔTTFT", "ttft_mean", False),
    ("Δengine", "engine_mean", True),
)


def results_table(
    summaries: Sequence[RunSummary], baseline: Baseline | str | None, *, wide: bool = False
) -> Table:
    """The terminal table.  The default columns fit a 120-column terminal (means in seconds,
    recomputed tokens, peak KV share, and the E2E / P99 / TTFT reductions); ``wide`` adds the
    engine time, swapped bytes and the engine-time reduction."""
    base = _as_baseline(baseline)
    reds = reductions(summaries, base) if base else {}
    columns = [c for c in _COLUMNS if wide or not c.wide_only]
    deltas = [d for d in _DELTAS if wide or not d[2]] if base else []
    title = f"Δ: % lower than {base.label} (negative: higher)" if base else None
    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col.header, justify=col.justify, no_wrap=True)  # type: ignore[arg-type]
    for header, _, _ in deltas:
        table.add_column(header, justify="right", no_wrap=True)
    for i, s in enumerate(summaries):
        row = [col.cell(s) for col in columns]
        r = reds.get(i)
        row += [_fmt_pct(getattr(r, field)) if r else "—" for _, field, _ in deltas]
        table.add_row(*row)
    return table


def write_csv(
    summaries: Sequence[RunSummary],
    path: Path,
    baseline: Baseline | str | None = None,
    *,
    extra: Sequence[dict[str, Any]] | None = None,
) -> None:
    """One row per run; ``extra``: more columns per run (the protocol's window and verdict)."""
    base = _as_baseline(baseline)
    reds = reductions(summaries, base) if base else {}
    rows = []
    for i, s in enumerate(summaries):
        row = s.flat()
        if extra is not None:
            row.update(extra[i])
        r = reds.get(i)
        if r is not None and base is not None:
            row["baseline"] = base.policy
            row["baseline_predictor"] = r.baseline_predictor
            for name in ("e2e_mean", "e2e_p99", "ttft_mean", "engine_mean"):
                row[f"lower_than_baseline_{name}_pct"] = getattr(r, name)
        rows.append(row)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_json(
    summaries: Sequence[RunSummary],
    path: Path,
    config: dict[str, Any],
    *,
    extra: Sequence[dict[str, Any]] | None = None,
) -> None:
    runs = [s.to_dict() for s in summaries]
    if extra is not None:
        for run, more in zip(runs, extra, strict=True):
            run.update(more)
    payload = {"config": config, "runs": runs}
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def write_markdown(
    summaries: Sequence[RunSummary], path: Path, baseline: Baseline | str | None
) -> None:
    """A compact Markdown table (what docs/benchmarks.md quotes)."""
    base = _as_baseline(baseline)
    reds = reductions(summaries, base) if base else {}
    head = "| policy | predictor | qps | E2E mean s | E2E P99 s | TTFT mean s | engine mean s | recomputed tok |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if base:
        head += f" E2E vs {base.label} | P99 vs {base.label} | TTFT vs {base.label} |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for i, s in enumerate(summaries):
        line = (
            f"| {s.policy} | {s.predictor} | {s.qps:g} | {s.e2e.mean:.2f} | {s.e2e.p99:.2f} | "
            f"{s.ttft.mean:.3f} | {s.engine_time.mean:.2f} | {s.recomputed_tokens:,} |"
        )
        if base:
            r = reds.get(i)
            cells = (r.e2e_mean, r.e2e_p99, r.ttft_mean) if r else (math.nan,) * 3
            line += "".join(f" {_fmt_pct(c)} |" for c in cells)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
