"""PNG plots: latency against load for each policy, and KV memory over time for one run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lamps_agent.metrics import KVTimeline, RunSummary


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_latency_vs_qps(summaries: Sequence[RunSummary], path: Path, *, title: str = "") -> None:
    plt = _pyplot()
    series: dict[str, list[RunSummary]] = defaultdict(list)
    for s in summaries:
        label = s.policy if s.predictor == "oracle" else f"{s.policy} ({s.predictor})"
        series[label].append(s)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels: tuple[tuple[str, Callable[[RunSummary], float]], ...] = (
        ("mean E2E latency (s)", lambda s: s.e2e.mean),
        ("P99 E2E latency (s)", lambda s: s.e2e.p99),
        ("mean TTFT (s)", lambda s: s.ttft.mean),
    )
    for ax, (ylabel, value) in zip(axes, panels, strict=True):
        for label, runs in sorted(series.items()):
            runs = sorted(runs, key=lambda s: s.qps)
            ax.plot([s.qps for s in runs], [value(s) for s in runs], marker="o", label=label)
        ax.set_xlabel("arrival rate (programs/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kv_timeline(timeline: KVTimeline, path: Path, *, title: str = "") -> None:
    plt = _pyplot()
    cap = timeline.capacity_blocks
    used = [100.0 * u / cap for u in timeline.used_blocks]
    pinned = [100.0 * p / cap for p in timeline.preserved_blocks]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(timeline.times, used, lw=0.8, label="KV in use (all)")
    ax.plot(timeline.times, pinned, lw=0.8, label="held by requests paused in a tool")
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
