"""The main job's result: per workload, each policy's capacity beside the physical bound, one load
point where every policy is stable, and the sentence a user can repeat.

The numbers come from the steady-state protocol (:mod:`lamps_agent.bench.protocol`) and the
capacity search (:mod:`lamps_agent.bench.capacity`); this module only reads them.  The sentence
is computed from the run, never written in advance: it names the policy with the highest stable
capacity, its ratio to stock vLLM's, and both P99 latencies at the common load point (or says
that stock vLLM was not beaten, or that a capacity could not be bracketed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.bench.capacity import Bracket
from lamps_agent.bench.capacity_bound import CapacityBound

STOCK = "vllm"
"""Stock vLLM (FCFS, recompute on preemption, prefix caching): what the sentence compares with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoWorkload:
    """A trace (built-in name, file or ``longctx[:KIND]``) on a preset."""

    trace: str
    preset: str

    @property
    def label(self) -> str:
        return f"{self.trace} on {self.preset}"

    @property
    def generated(self) -> bool:
        """A generated long-context workload (its pool of distinct programs is sized)."""
        return self.trace == "longctx" or self.trace.startswith("longctx:")

    @classmethod
    def parse(cls, text: str) -> DemoWorkload:
        """``TRACE@PRESET``, e.g. ``multi-api@a100-gptj6b``."""
        trace, sep, preset = text.strip().rpartition("@")
        if not sep or not trace or not preset:
            raise ValueError(f"--workloads: {text!r} is not TRACE@PRESET (multi-api@a100-gptj6b)")
        return cls(trace=trace, preset=preset)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyCapacity:
    policy: str
    bracket: Bracket  # stable at low, unstable at high

    @property
    def capacity(self) -> float | None:
        return self.bracket.low


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPoint:
    """One policy's run at the common load point."""

    policy: str
    qps: float
    stable: bool | None  # None: too few programs to judge (Stability.stable)
    e2e_mean: float
    e2e_p99: float
    ttft_mean: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadResult:
    workload: DemoWorkload
    label: str  # how the tables and the sentence name it
    bound: CapacityBound
    capacities: tuple[PolicyCapacity, ...]
    load_qps: float | None  # a rate every policy sustained (None: none found)
    at_load: tuple[LoadPoint, ...]

    def capacity_of(self, policy: str) -> PolicyCapacity | None:
        return next((c for c in self.capacities if c.policy == policy), None)

    def point_of(self, policy: str) -> LoadPoint | None:
        return next((p for p in self.at_load if p.policy == policy), None)


def common_load(capacities: Sequence[PolicyCapacity]) -> float | None:
    """The highest tested rate at which every policy was stable: the smallest capacity."""
    lows = [c.capacity for c in capacities]
    if not lows or any(low is None for low in lows):
        return None
    return min(low for low in lows if low is not None)


def best_policy(capacities: Sequence[PolicyCapacity], *, stock: str = STOCK) -> str | None:
    """The policy other than ``stock`` with the highest stable capacity (ties: the first given)."""
    rivals = [c for c in capacities if c.policy != stock and c.capacity is not None]
    if not rivals:
        return None
    return max(rivals, key=lambda c: c.capacity or 0.0).policy


def _ratio_text(best: PolicyCapacity, stock: PolicyCapacity) -> str:
    assert best.capacity is not None and stock.capacity is not None
    ratio = best.capacity / stock.capacity
    # The brackets are resolution-wide: a ratio inside them is not a difference.
    # (best.capacity > stock.capacity here: the brackets overlap when best's low end is below
    # stock's unstable rate)
    if stock.bracket.high is not None and best.capacity < stock.bracket.high:
        return "as many agent programs as"
    at_least = "at least " if best.bracket.high is None else ""
    return f"{at_least}{ratio:.2f}× the agent programs of"


def _seconds(s: float) -> str:
    """Three significant digits, never in exponent form (1,003 s, 315 s, 56.0 s)."""
    return f"{s:,.0f} s" if s >= 100 else f"{s:.3g} s"


def headline(result: WorkloadResult, *, stock: str = STOCK) -> str:
    """One sentence a user can repeat, computed from ``result``."""
    name = result.label
    stock_cap = result.capacity_of(stock)
    best_name = best_policy(result.capacities, stock=stock)
    if stock_cap is None or stock_cap.capacity is None or best_name is None:
        return f"On {name}, a capacity could not be bracketed; see the table."
    best = result.capacity_of(best_name)
    assert best is not None and best.capacity is not None
    if best.capacity <= stock_cap.capacity:
        return (
            f"On {name}, no policy served more agent programs than stock vLLM "
            f"({stock_cap.capacity:.3g} programs/s)."
        )
    text = (
        f"On {name}, {best_name} serves {_ratio_text(best, stock_cap)} stock vLLM "
        f"({best.capacity:.3g} vs {stock_cap.capacity:.3g} programs/s stable, "
        f"{best.capacity / result.bound.bound:.0%} of the physical bound)"
    )
    mine, theirs = result.point_of(best_name), result.point_of(stock)
    if mine is not None and theirs is not None and result.load_qps is not None:
        text += (
            f"; at {result.load_qps:.3g} programs/s, where all are stable, its P99 E2E is "
            f"{_seconds(mine.e2e_p99)} against {_seconds(theirs.e2e_p99)}"
        )
    return text + "."
