"""PNG plots: latency against load for each policy, KV memory over time for one run, and the
main job's capacities beside the bound."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamps_agent.bench.demo import WorkloadResult
from lamps_agent.bench.runner import RECOMMENDED_POLICY
from lamps_agent.metrics import KVTimeline, RunSummary

# Each policy gets its own colour and marker, each predictor its own line style (colour alone
# fails in grey print and for colour-blind readers); the recommended policy is drawn last and
# thicker, so no other line hides it.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
UNSTABLE_LABEL = "unstable (no steady state)"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True, slots=True)
class _Style:
    label: str
    color: str
    marker: str
    linestyle: Any
    recommended: bool
    reference: bool  # the oracle-predictor run, which the others are compared with


def _styles(summaries: Sequence[RunSummary]) -> list[_Style]:
    """One style per (policy, predictor) series, in drawing order: the recommended policy last,
    and within a policy its oracle run last, so the reference line is never under another."""
    policies = list(dict.fromkeys(s.policy for s in summaries))
    predictors = list(dict.fromkeys(s.predictor for s in summaries))
    colors = [f"C{i}" for i in range(10)]
    styles = []
    for pol_i, policy in enumerate(policies):
        for pred_i, predictor in enumerate(predictors):
            # colour and marker tell the policies apart; in a one-policy run, the predictors
            hue = pol_i if len(policies) > 1 else pred_i
            styles.append(
                _Style(
                    label=_series_label(policy, predictor),
                    color=colors[hue % len(colors)],
                    marker=MARKERS[hue % len(MARKERS)],
                    linestyle=LINESTYLES[pred_i % len(LINESTYLES)],
                    recommended=policy == RECOMMENDED_POLICY,
                    reference=predictor == "oracle",
                )
            )
    # stable: keeps the run order otherwise
    return sorted(styles, key=lambda st: (st.recommended, st.reference))


def plot_latency_vs_qps(
    summaries: Sequence[RunSummary],
    path: Path,
    *,
    title: str = "",
    unstable: Collection[tuple[str, str, float]] = (),
) -> None:
    """Mean E2E, P99 E2E and mean TTFT against the arrival rate; each y axis starts at 0, so a
    small difference is drawn as small.  ``unstable``: the (policy, predictor, qps) points whose
    row is unstable (:attr:`Row.stable`, the verdict the tables print), circled in red: they have
    no steady state, so their values depend on the window's length."""
    plt = _pyplot()
    series: dict[str, list[RunSummary]] = defaultdict(list)
    for s in sorted(summaries, key=lambda s: s.qps):
        series[_label(s)].append(s)
    panels: tuple[tuple[str, Callable[[RunSummary], float]], ...] = (
        ("mean E2E latency (s)", lambda s: s.e2e.mean),
        ("P99 E2E latency (s)", lambda s: s.e2e.p99),
        ("mean TTFT (s)", lambda s: s.ttft.mean),
    )
    rates = sorted({s.qps for s in summaries})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, (ylabel, value) in zip(axes, panels, strict=True):
        for style in _styles(summaries):
            runs = series[style.label]
            if not runs:
                continue
            ax.plot(
                [s.qps for s in runs],
                [value(s) for s in runs],
                color=style.color,
                marker=style.marker,
                linestyle=style.linestyle,
                linewidth=2.6 if style.recommended else 1.3,
                markersize=7 if style.recommended else 5,
                zorder=3 if style.recommended else 2,
                label=style.label,
            )
        marked = [s for s in summaries if (s.policy, s.predictor, s.qps) in unstable]
        if marked:
            ax.scatter(
                [s.qps for s in marked],
                [value(s) for s in marked],
                s=160,
                facecolors="none",
                edgecolors="red",
                linewidths=1.6,
                zorder=4,
                label=UNSTABLE_LABEL,
            )
        ax.set_xlabel("arrival rate (programs/s)")
        ax.set_xticks(rates)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _series_label(policy: str, predictor: str) -> str:
    return policy if predictor == "oracle" else f"{policy} ({predictor})"


def _label(s: RunSummary) -> str:
    return _series_label(s.policy, s.predictor)


def plot_kv_timeline(timeline: KVTimeline, path: Path, *, title: str = "") -> None:
    plt = _pyplot()
    cap = timeline.capacity_blocks
    used = [100.0 * u / cap for u in timeline.used_blocks]
    pinned = [100.0 * p / cap for p in timeline.preserved_blocks]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(timeline.times, used, lw=0.8, label="KV in use (all)")
    ax.plot(
        timeline.times, pinned, lw=0.8, linestyle="--", label="held by requests paused in a tool"
    )
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("GPU KV blocks (% of capacity)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_capacity(results: Sequence[WorkloadResult], path: Path) -> None:
    """Each workload's stable capacities as bars (programs/s), the physical bound as a line; a
    policy whose rate never failed up to the bound gets a hatched bar (a lower limit)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        names = [c.policy for c in r.capacities]
        values = [c.capacity or 0.0 for c in r.capacities]
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        for bar, c in zip(bars, r.capacities, strict=True):
            if c.bracket.high is None:
                bar.set_hatch("//")
        ax.axhline(r.bound.bound, color="black", linestyle="--", label=f"bound ({r.bound.limit})")
        ax.set_title(r.workload.label, fontsize=10)
        ax.set_ylabel("highest stable programs/s")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
