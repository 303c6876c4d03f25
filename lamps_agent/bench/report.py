"""Tables and files from a grid of runs: reductions relative to a baseline, CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lamps_agent.metrics import RunSummary


@dataclass(frozen=True, slots=True)
class Reduction:
    """How much lower than the baseline, in percent (negative: higher)."""

    e2e_mean: float
    e2e_p99: float
    ttft_mean: float
    engine_mean: float


def _pct_lower(value: float, base: float) -> float:
    if not math.isfinite(value) or not math.isfinite(base) or base == 0:
        return math.nan
    return 100.0 * (base - value) / base


def reductions(summaries: Sequence[RunSummary], baseline: str) -> dict[int, Reduction]:
    """For each summary (by index), its reduction vs the baseline policy at the same qps and
    predictor (or, if the baseline ran with one predictor only, that one)."""
    base: dict[tuple[float, str], RunSummary] = {}
    for s in summaries:
        if s.policy == baseline:
            base[(s.qps, s.predictor)] = s
            base.setdefault((s.qps, "*"), s)
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
        )
    return out


def _fmt_pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.1f}%"


def results_table(summaries: Sequence[RunSummary], baseline: str | None) -> Table:
    reds = reductions(summaries, baseline) if baseline else {}
    table = Table(title=f"lower than {baseline} (%)" if baseline else None, show_lines=False)
    for name, justify in (
        ("policy", "left"),
        ("predictor", "left"),
        ("qps", "right"),
        ("E2E mean s", "right"),
        ("E2E p99 s", "right"),
        ("TTFT mean s", "right"),
        ("engine mean s", "right"),
        ("recomputed tok", "right"),
        ("swapped GB", "right"),
        ("peak KV", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if baseline:
        for name in ("ΔE2E", "ΔP99", "ΔTTFT", "Δengine"):
            table.add_column(name, justify="right")
    for i, s in enumerate(summaries):
        row = [
            s.policy,
            s.predictor,
            f"{s.qps:g}",
            f"{s.e2e.mean:.2f}",
            f"{s.e2e.p99:.2f}",
            f"{s.ttft.mean:.3f}",
            f"{s.engine_time.mean:.2f}",
            f"{s.recomputed_tokens:,}",
            f"{s.swapped_bytes / 1e9:.1f}",
            f"{s.peak_kv_fraction:.0%}",
        ]
        if baseline:
            r = reds.get(i)
            row += (
                [
                    _fmt_pct(r.e2e_mean),
                    _fmt_pct(r.e2e_p99),
                    _fmt_pct(r.ttft_mean),
                    _fmt_pct(r.engine_mean),
                ]
                if r
                else ["—"] * 4
            )
        table.add_row(*row)
    return table


def write_csv(summaries: Sequence[RunSummary], path: Path, baseline: str | None = None) -> None:
    reds = reductions(summaries, baseline) if baseline else {}
    rows = []
    for i, s in enumerate(summaries):
        row = s.flat()
        r = reds.get(i)
        if r is not None:
            row["baseline"] = baseline
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


def write_json(summaries: Sequence[RunSummary], path: Path, config: dict[str, Any]) -> None:
    payload = {"config": config, "runs": [s.to_dict() for s in summaries]}
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def write_markdown(summaries: Sequence[RunSummary], path: Path, baseline: str | None) -> None:
    """A compact Markdown table (what docs/benchmarks.md quotes)."""
    reds = reductions(summaries, baseline) if baseline else {}
    head = "| policy | predictor | qps | E2E mean s | E2E P99 s | TTFT mean s | engine mean s | recomputed tok |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if baseline:
        head += f" E2E vs {baseline} | P99 vs {baseline} | TTFT vs {baseline} |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for i, s in enumerate(summaries):
        line = (
            f"| {s.policy} | {s.predictor} | {s.qps:g} | {s.e2e.mean:.2f} | {s.e2e.p99:.2f} | "
            f"{s.ttft.mean:.3f} | {s.engine_time.mean:.2f} | {s.recomputed_tokens:,} |"
        )
        if baseline:
            r = reds.get(i)
            cells = (r.e2e_mean, r.e2e_p99, r.ttft_mean) if r else (math.nan,) * 3
            line += "".join(f" {_fmt_pct(c)} |" for c in cells)
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
