"""Per-request and per-run metrics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestMetrics:
    request_id: int
    program_id: str
    agent: str
    arrival: float
    finish: float
    e2e: float  # seconds from arrival to the last token, tool time included
    tool_time: float  # seconds spent in tool calls (no scheduler can shorten these)
    ttft: float  # seconds from arrival to the first token of the first turn
    normalized_latency: float  # INFERCEPT: e2e / output tokens (s/token)
    max_queue_wait: float  # the longest single stay in a queue
    output_tokens: int
    tool_calls: int
    recomputed_tokens: int
    preemptions: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Distribution:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(mean=math.nan, p50=math.nan, p90=math.nan, p99=math.nan)
        arr = np.asarray(values, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(mean=float(arr.mean()), p50=float(p50), p90=float(p90), p99=float(p99))


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    policy: str
    predictor: str
    preset: str
    trace: str
    qps: float
    seed: int
    num_requests: int
    rejected: int
    e2e: Distribution
    ttft: Distribution
    normalized_latency: Distribution
    engine_time: Distribution  # e2e minus tool time: what the scheduler controls
    max_queue_wait: Distribution
    makespan: float
    throughput_rps: float
    throughput_tokens_per_s: float
    recomputed_tokens: int
    swapped_bytes: int
    memory_waste_token_s: float  # KV tokens held by requests paused in a tool × seconds
    peak_kv_blocks: int
    peak_kv_fraction: float
    iterations: int
    preemptions: int
    pins_released: int
    swap_fallbacks: int
    prefix_hit_tokens: int  # context tokens found in the prefix cache instead of recomputed
    admissions: int  # requests taken from the waiting queue (0 where the engine does not say)
    starved_admissions: int  # ... of them promoted by a starvation bound

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """One level deep (``e2e.mean`` → ``e2e_mean``), for CSV rows."""
        row: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    row[f"{key}_{sub}"] = subvalue
            else:
                row[key] = value
        return row


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLabels:
    """Names that go into the summary, not into the run."""

    policy: str
    predictor: str
    trace: str = "workload"
    qps: float = 0.0
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineCounters:
    """What an engine counted over a run (the simulator exactly; a real engine what it exposes)."""

    recomputed_tokens: int
    swapped_bytes: int = 0
    memory_waste_token_s: float = 0.0
    peak_kv_blocks: int = 0
    peak_kv_fraction: float = 0.0
    iterations: int = 0
    preemptions: int = 0
    pins_released: int = 0
    swap_fallbacks: int = 0
    rejected: int = 0
    prefix_hit_tokens: int = 0
    admissions: int = 0
    starved_admissions: int = 0


def summarize(
    requests: Sequence[RequestMetrics], *, labels: RunLabels, preset: str, counters: EngineCounters
) -> RunSummary:
    """The one summary of a run, from per-request records: the simulator's and the real-engine
    replay's reports both come from here."""
    makespan = max((m.finish for m in requests), default=0.0)
    first = min((m.arrival for m in requests), default=0.0)
    span = max(makespan - first, 1e-9)
    return RunSummary(
        policy=labels.policy,
        predictor=labels.predictor,
        preset=preset,
        trace=labels.trace,
        qps=labels.qps,
        seed=labels.seed,
        num_requests=len(requests),
        rejected=counters.rejected,
        e2e=Distribution.of([m.e2e for m in requests]),
        ttft=Distribution.of([m.ttft for m in requests]),
        normalized_latency=Distribution.of([m.normalized_latency for m in requests]),
        engine_time=Distribution.of([m.e2e - m.tool_time for m in requests]),
        max_queue_wait=Distribution.of([m.max_queue_wait for m in requests]),
        makespan=makespan,
        throughput_rps=len(requests) / span,
        throughput_tokens_per_s=sum(m.output_tokens for m in requests) / span,
        recomputed_tokens=counters.recomputed_tokens,
        swapped_bytes=counters.swapped_bytes,
        memory_waste_token_s=counters.memory_waste_token_s,
        peak_kv_blocks=counters.peak_kv_blocks,
        peak_kv_fraction=counters.peak_kv_fraction,
        iterations=counters.iterations,
        preemptions=counters.preemptions,
        pins_released=counters.pins_released,
        swap_fallbacks=counters.swap_fallbacks,
        prefix_hit_tokens=counters.prefix_hit_tokens,
        admissions=counters.admissions,
        starved_admissions=counters.starved_admissions,
    )


@dataclass(frozen=True, slots=True)
class KVTimeline:
    """GPU KV use over simulated time, one point per iteration."""

    times: tuple[float, ...]
    used_blocks: tuple[int, ...]
    preserved_blocks: tuple[int, ...]
    capacity_blocks: int


@dataclass(frozen=True, slots=True)
class RunResult:
    summary: RunSummary
    requests: tuple[RequestMetrics, ...]
    timeline: KVTimeline | None
    # where new programs waited for their first token (FirstTurnWaits.summary), whole run
    first_turn_waits: Mapping[str, float] | None = None
