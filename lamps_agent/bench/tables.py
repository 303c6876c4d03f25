"""Tables of protocol rows (median and range over repeats, stability, the contention-free bound)
and of capacities, for the terminal and for Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.table import Table

from lamps_agent.bench.aggregate import (
    BASE_UNSTABLE,
    UNSTABLE,
    Row,
    base_of,
    baseline_rows,
    difference,
)
from lamps_agent.bench.capacity import Bracket
from lamps_agent.bench.capacity_bound import CapacityBound
from lamps_agent.bench.report import Baseline

_DELTAS = (("ΔE2E", "e2e_mean"), ("ΔP99", "e2e_p99"), ("ΔTTFT", "ttft_mean"))


def stable_text(stable: bool | None) -> str:
    """The stable column: yes, NO, or — where nothing was judged."""
    return "—" if stable is None else ("yes" if stable else "NO")


def _fmt_alone(row: Row) -> str:
    return "—" if row.alone_e2e != row.alone_e2e else f"{row.alone_e2e:.2f}"  # nan check


def _bases(rows: Sequence[Row], baseline: Baseline | None) -> dict[tuple[float, str], Row]:
    return baseline_rows(rows, baseline.policy, baseline.predictor) if baseline else {}


def _secs(value: float) -> str:
    """Seconds in at most five characters, three significant digits or more: the default table
    fits 80 columns (``--wide``: the full precision)."""
    if value != value:  # nan
        return "—"
    for limit, fmt in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if abs(value) >= limit:
            return format(value, fmt)
    return format(value, ".3f")


def _short_difference(text: str) -> str:
    """A difference for the narrow table: no decimal from 10 % on (``+23.4%`` → ``+23%``); an
    unstable row's shows "—", its stable column already saying NO."""
    if text == UNSTABLE:
        return "—"
    if text.endswith("%") and abs(float(text[:-1])) >= 10:
        return f"{float(text[:-1]):+.0f}%"
    return text


def rows_table(
    rows: Sequence[Row], baseline: Baseline | None, *, wide: bool = False, repeats: str = "seeds"
) -> Table:
    """Medians per row (with several repeats, half the range of the E2E mean too).  The default
    fits 80 columns (short numbers; the contention-free bound only with ``wide``); ``wide`` adds
    the bound, the engine time, the programs measured and the recomputed tokens, at full
    precision."""
    bases = _bases(rows, baseline)
    several = any(len(r.samples) > 1 for r in rows)
    caption = None
    if baseline:
        caption = (
            f"Δ: % lower than {baseline.label} (negative: higher); ≈: within the range over "
            f"{repeats}; {'unstable' if wide else '—'}: no steady state (stable NO), no Δ; "
            f"{BASE_UNSTABLE}: the baseline is unstable there"
        )
    table = Table(
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    heads = ["policy", "qps", "stable", *(["alone s"] if wide else []), "E2E s"]
    if several:
        heads.append("±")  # half the range over the repeats
    heads += ["P99 s", "TTFT s"]
    if wide:
        heads += ["engine s", "measured", "recomputed"]
    if baseline:
        heads += [d for d, _ in _DELTAS]
    for h in heads:
        # a long label wraps (at its space) before a number is cut short
        table.add_column(
            h,
            justify="left" if h == "policy" else "right",
            no_wrap=h != "policy",
            overflow="fold",
        )
    secs = (lambda v: f"{v:.2f}") if wide else _secs
    for row in rows:
        e2e = row.spread("e2e_mean")
        cells = [row.label, f"{row.qps:g}", stable_text(row.stable)]
        cells += [_fmt_alone(row)] if wide else []
        cells.append(secs(e2e.median))
        if several:
            cells.append(secs(e2e.width / 2) if e2e.n > 1 else "")
        ttft = row.spread("ttft_mean").median
        cells += [secs(row.spread("e2e_p99").median), f"{ttft:.3f}" if wide else _secs(ttft)]
        if wide:
            cells += [
                f"{row.spread('engine_mean').median:.2f}",
                f"{row.measured:,}",
                f"{row.spread('recomputed').median:,.0f}",
            ]
        if baseline:
            base = base_of(row, bases)
            for _, metric in _DELTAS:
                text = difference(row, base, metric) if base else "—"
                cells.append(text if wide else _short_difference(text))
        table.add_row(*cells)
    return table


def rows_markdown(rows: Sequence[Row], baseline: Baseline | None) -> str:
    """The Markdown table docs/benchmarks.md quotes: medians with (min–max) over the repeats."""
    bases = _bases(rows, baseline)
    judged = any(r.stable is not None for r in rows)  # simulator rows; a real engine's are not
    head = "| policy | qps |" + (" stable |" if judged else "") + " programs measured |"
    head += (" alone E2E s |" if judged else "") + " E2E mean s | E2E P99 s | TTFT mean s |"
    head += " engine mean s | recomputed tok |"
    rule = "|---|---:|" + (":---:|" if judged else "") + "---:|" + ("---:|" if judged else "")
    rule += "---:|---:|---:|---:|---:|"
    if baseline:
        b = baseline.label
        head += f" E2E vs {b} | P99 vs {b} | TTFT vs {b} |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for row in rows:
        line = f"| {row.label} | {row.qps:g} |" + (
            f" {stable_text(row.stable)} |" if judged else ""
        )
        line += f" {row.measured:,} |" + (f" {_fmt_alone(row)} |" if judged else "")
        line += (
            f" {row.spread('e2e_mean').text()} | "
            f"{row.spread('e2e_p99').text()} | {row.spread('ttft_mean').text('.3f')} | "
            f"{row.spread('engine_mean').text()} | {row.spread('recomputed').text(',.0f')} |"
        )
        if baseline:
            base = base_of(row, bases)
            line += "".join(f" {difference(row, base, m) if base else '—'} |" for _, m in _DELTAS)
        lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    policy: str
    stable: Bracket
    p99: Bracket | None  # with a P99 target
    evaluations: int


def capacity_table(
    caps: Sequence[Capacity], *, p99_target: float | None, bound: CapacityBound | None = None
) -> Table:
    title = "capacity: highest stable qps (bracket: stable at low, unstable at high)"
    if bound is not None:
        title += f"; bound: {_bound_text(bound)}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for h in (
        "policy",
        "stable qps",
        "bracket",
        *(["P99 ≤ target qps"] if p99_target else []),
        *(["bound qps", "of bound"] if bound else []),
        "runs",
    ):
        table.add_column(h, justify="left" if h == "policy" else "right", no_wrap=True)
    for c in caps:
        cells = [c.policy, bracket_low_text(c.stable), bracket_text(c.stable)]
        if p99_target:
            cells.append(bracket_low_text(c.p99) if c.p99 else "—")
        if bound:
            cells += [f"{bound.bound:.3g}", bound_share_text(c.stable, bound)]
        cells.append(str(c.evaluations))
        table.add_row(*cells)
    return table


def capacity_markdown(
    caps: Sequence[Capacity], *, p99_target: float | None, bound: CapacityBound | None = None
) -> str:
    head = "| policy | highest stable qps | bracket (stable – unstable) |"
    rule = "|---|---:|---:|"
    if p99_target:
        head += f" highest qps with P99 E2E ≤ {p99_target:g} s |"
        rule += "---:|"
    if bound:
        head += " bound qps | share of bound |"
        rule += "---:|---:|"
    lines = [head, rule]
    for c in caps:
        line = f"| {c.policy} | {bracket_low_text(c.stable)} | {bracket_text(c.stable)} |"
        if p99_target:
            line += f" {bracket_low_text(c.p99) if c.p99 else '—'} |"
        if bound:
            line += f" {bound.bound:.3g} | {bound_share_text(c.stable, bound)} |"
        lines.append(line)
    out = "\n".join(lines) + "\n"
    if bound:
        out += f"\nBound: {_bound_text(bound)} (lamps_agent/bench/capacity_bound.py).\n"
    return out


def _bound_text(b: CapacityBound) -> str:
    return (
        f"{b.bound:.3g} qps ({b.limit}-bound; KV kept {b.kv_kept:.3g}, KV dropped "
        f"{b.kv_dropped:.3g}, compute {b.compute:.3g})"
    )


def bound_share_text(b: Bracket, bound: CapacityBound) -> str:
    """The stable capacity as a share of the bound (its low end; ≥ when no rate failed)."""
    if b.low is None:
        return "—"
    share = f"{b.low / bound.bound:.0%}"
    return f"≥ {share}" if b.high is None else share


def bracket_low_text(b: Bracket) -> str:
    if b.low is None:
        return f"< {b.high:.3g}" if b.high is not None else "—"
    return f"≥ {b.low:.3g}" if b.high is None else f"{b.low:.3g}"


def bracket_text(b: Bracket) -> str:
    lo = "—" if b.low is None else f"{b.low:.3g}"
    hi = "—" if b.high is None else f"{b.high:.3g}"
    return f"{lo} – {hi}"
