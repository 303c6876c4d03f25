"""Two engines' step records compared step by step (issue 21: "proven step by step").

Each run is a list of :class:`~lamps_agent.steps.StepRecord` with requests named
``PROGRAM.TURN`` (the simulator and the virtual-clock engine both name them so).  A step's *batch*
is what it scheduled: each request and the tokens computed for it.  Two runs agree on a step when
their batches are equal; :func:`compare_steps` finds

* the **first divergence**: the first step, walking both runs in lockstep, whose batches differ,
  with what differs (requests only one run scheduled, token counts that differ) — everything
  before it is the same schedule;
* the **share of identical steps**: the steps the two runs have in common when aligned as
  sequences (:class:`difflib.SequenceMatcher`'s matching blocks, a lower bound on the longest
  common subsequence, so one extra step does not make every later one "different"), over the
  longer run;
* the aggregate figures both runs have (steps, time, prefill tokens, preemptions, peak blocks).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.steps import StepRecord

Batch = tuple[tuple[str, int], ...]


def batch(record: StepRecord) -> Batch:
    """What a step scheduled, as a comparable value."""
    return tuple(sorted(record.scheduled.items()))


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One run's aggregate figures from its step records."""

    steps: int
    seconds: float  # Σ step time
    prefill_tokens: int
    decode_tokens: int
    preemptions: int
    peak_used_blocks: int

    @classmethod
    def of(cls, records: Sequence[StepRecord]) -> RunFigures:
        return cls(
            steps=len(records),
            seconds=sum(r.ms for r in records) / 1000.0,
            prefill_tokens=sum(r.shape.prefill_tokens for r in records),
            decode_tokens=sum(r.shape.decode_seqs for r in records),
            preemptions=sum(len(r.preempted) for r in records),
            peak_used_blocks=max((r.used_blocks for r in records), default=0),
        )


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first step at which the two runs' batches differ (1-based, in lockstep)."""

    step: int
    only_a: dict[str, int]  # requests (tokens) only run A scheduled in that step
    only_b: dict[str, int]
    tokens_differ: dict[str, tuple[int, int]]  # scheduled by both, different tokens (A, B)
    preempted_a: tuple[str, ...]
    preempted_b: tuple[str, ...]
    t_a: float  # when the step started in each run; -1: that run had no more steps
    t_b: float

    def describe(self, names: tuple[str, str] = ("A", "B")) -> str:
        a, b = names
        parts = []
        if self.t_a < 0 or self.t_b < 0:
            parts.append(f"{a if self.t_a < 0 else b} ran out of steps")
        if self.only_a:
            parts.append(f"only {a} scheduled {_requests(self.only_a)}")
        if self.only_b:
            parts.append(f"only {b} scheduled {_requests(self.only_b)}")
        for key, (na, nb) in sorted(self.tokens_differ.items())[:4]:
            parts.append(f"{key}: {na} tokens in {a}, {nb} in {b}")
        if self.preempted_a != self.preempted_b:
            parts.append(
                f"preempted {list(self.preempted_a)} in {a}, {list(self.preempted_b)} in {b}"
            )
        return f"step {self.step}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class StepDiff:
    a: RunFigures
    b: RunFigures
    matched: int  # steps with identical batches in the sequence alignment
    lockstep: int  # leading steps identical in lockstep (first divergence - 1)
    first: Divergence | None  # None: the runs are identical step for step

    @property
    def identical_share(self) -> float:
        longer = max(self.a.steps, self.b.steps)
        return self.matched / longer if longer else 1.0


def compare_steps(a: Sequence[StepRecord], b: Sequence[StepRecord]) -> StepDiff:
    """Run A's steps against run B's (see the module docstring)."""
    batches_a, batches_b = [batch(r) for r in a], [batch(r) for r in b]
    matcher = difflib.SequenceMatcher(None, batches_a, batches_b, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    first = _first_divergence(a, b, batches_a, batches_b)
    lockstep = (first.step - 1) if first else len(a)
    return StepDiff(RunFigures.of(a), RunFigures.of(b), matched, lockstep, first)


def _first_divergence(
    a: Sequence[StepRecord], b: Sequence[StepRecord], batches_a: list[Batch], batches_b: list[Batch]
) -> Divergence | None:
    for i in range(max(len(a), len(b))):
        if i < len(a) and i < len(b):
            if batches_a[i] == batches_b[i] and a[i].preempted == b[i].preempted:
                continue
            ra, rb = a[i].scheduled, b[i].scheduled
            return Divergence(
                step=i + 1,
                only_a={k: n for k, n in ra.items() if k not in rb},
                only_b={k: n for k, n in rb.items() if k not in ra},
                tokens_differ={k: (n, rb[k]) for k, n in ra.items() if k in rb and rb[k] != n},
                preempted_a=tuple(a[i].preempted),
                preempted_b=tuple(b[i].preempted),
                t_a=a[i].t,
                t_b=b[i].t,
            )
        # one run has more steps: the shorter one "schedules nothing" there
        ra = a[i].scheduled if i < len(a) else {}
        rb = b[i].scheduled if i < len(b) else {}
        return Divergence(
            step=i + 1, only_a=dict(ra), only_b=dict(rb), tokens_differ={},
            preempted_a=tuple(a[i].preempted) if i < len(a) else (),
            preempted_b=tuple(b[i].preempted) if i < len(b) else (),
            t_a=a[i].t if i < len(a) else -1.0, t_b=b[i].t if i < len(b) else -1.0,
        )  # fmt: skip
    return None


def _requests(tokens: dict[str, int], limit: int = 4) -> str:
    items = sorted(tokens.items())
    shown = ", ".join(f"{k} ({n})" for k, n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def diff_lines(diff: StepDiff, names: tuple[str, str] = ("A", "B")) -> list[str]:
    """A few lines a person reads: the share, the first divergence, the figures side by side."""
    a, b = names
    lines = [
        f"identical steps: {diff.matched} of {max(diff.a.steps, diff.b.steps)} "
        f"({diff.identical_share:.1%}); identical in lockstep for the first {diff.lockstep}",
        "first divergence: " + (diff.first.describe(names) if diff.first else "none"),
    ]
    width = max(len(a), len(b), 6)
    lines.append(
        f"{'':{width}} {'steps':>7} {'seconds':>9} {'prefill tok':>11} {'decode tok':>10} "
        f"{'preempt':>7} {'peak blk':>8}"
    )
    for name, f in ((a, diff.a), (b, diff.b)):
        lines.append(
            f"{name:{width}} {f.steps:7d} {f.seconds:9.3f} {f.prefill_tokens:11d} "
            f"{f.decode_tokens:10d} {f.preemptions:7d} {f.peak_used_blocks:8d}"
        )
    return lines
