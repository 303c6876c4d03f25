"""How far a program's context will grow: the ``program`` policy's footprint prediction.

A :class:`FootprintPredictor` learns, per agent, the turns per program and tokens added per turn
of the programs that finished (online, or seeded from the tool registry's recorded turns), with a
prior for agents never seen.  The policy asks it :meth:`~FootprintPredictor.for_request`; a study
that wants another source of footprints (the simulator's truth, an injected error) passes a
subclass that overrides that method (``benchmarks/program_policy.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from lamps_agent.policies.program.keys import program_step
from lamps_agent.request import Request


@dataclass(frozen=True, slots=True)
class Footprint:
    """A program's predicted future: its peak context and how many turns remain (this one in)."""

    peak: float
    remaining_turns: float
    growth: float  # tokens a turn adds (output + tool return)


@dataclass(slots=True)
class _AgentHistory:
    turns: deque[int] = field(default_factory=lambda: deque(maxlen=512))
    growth_sum: float = 0.0
    growth_n: int = 0

    def add(self, turns: int, growth: float) -> None:
        self.turns.append(turns)
        self.growth_sum += growth
        self.growth_n += 1


class TurnRecordLike(Protocol):
    """What :meth:`FootprintPredictor.seed_from_turns` reads (the tool registry's
    ``TurnRecord`` has these fields)."""

    agent: str
    step: int
    output_tokens: int
    prompt_tokens: int | None
    session_id: str | None


class FootprintPredictor:
    """Per-agent history of context growth: turns per program and tokens per turn.

    Fed by finished programs (:meth:`observe`); :meth:`predict` gives the peak context of a program
    at turn ``step`` with context ``context``: ``context + R · g`` with ``R = E[T − step | T >
    step]`` over the agent's observed turn counts ``T`` and ``g`` its mean tokens per turn.  An
    agent with fewer than ``min_programs`` finished programs uses the prior (``prior_turns``,
    ``prior_growth``).
    """

    def __init__(
        self,
        *,
        prior_turns: float = 8.0,
        prior_growth: float = 1500.0,
        min_programs: int = 3,
    ) -> None:
        if not prior_turns >= 1 or not prior_growth >= 0 or min_programs < 1:
            raise ValueError("need prior_turns >= 1, prior_growth >= 0, min_programs >= 1")
        self.prior_turns = prior_turns
        self.prior_growth = prior_growth
        self.min_programs = min_programs
        self._agents: dict[str, _AgentHistory] = {}

    def observe(self, *, agent: str, turns: int, first_prompt: int, peak: int) -> None:
        """A program of ``agent`` finished after ``turns`` turns, its context from
        ``first_prompt`` to ``peak`` tokens."""
        if turns < 1:
            raise ValueError(f"turns must be >= 1, got {turns}")
        hist = self._agents.setdefault(agent, _AgentHistory())
        hist.add(turns, max(peak - first_prompt, 0) / turns)

    def seed_from_turns(self, records: Iterable[TurnRecordLike]) -> int:
        """Learn from recorded turns grouped by session (the tool registry's ``iter_turns()``);
        sessions without prompt sizes are skipped.  Returns the programs learned."""
        sessions: dict[tuple[str, str], list[TurnRecordLike]] = {}
        for rec in records:
            if rec.session_id is None or rec.prompt_tokens is None:
                continue
            sessions.setdefault((rec.agent, rec.session_id), []).append(rec)
        for (agent, _), recs in sessions.items():
            recs.sort(key=lambda r: r.step)
            first, last = recs[0], recs[-1]
            assert first.prompt_tokens is not None and last.prompt_tokens is not None
            self.observe(
                agent=agent,
                turns=last.step + 1,
                first_prompt=first.prompt_tokens,
                peak=last.prompt_tokens + last.output_tokens,
            )
        return len(sessions)

    def learned(self) -> int:
        """How many agents are predicted from their history (the rest use the prior)."""
        return sum(1 for agent in self._agents if self.known(agent))

    def known(self, agent: str) -> bool:
        hist = self._agents.get(agent)
        return hist is not None and hist.growth_n >= self.min_programs

    def predict(self, *, agent: str, step: int, context: int) -> Footprint:
        hist = self._agents.get(agent)
        if hist is None or hist.growth_n < self.min_programs:
            remaining = max(self.prior_turns - step, 1.0)
            growth = self.prior_growth
        else:
            longer = [t - step for t in hist.turns if t > step]
            remaining = sum(longer) / len(longer) if longer else 1.0
            growth = hist.growth_sum / hist.growth_n
        # The last turn adds only its output; growth·(R − 1) + one output ≈ growth·R.
        return Footprint(
            peak=context + remaining * growth, remaining_turns=remaining, growth=growth
        )

    def for_request(self, req: Request) -> Footprint:
        """The footprint of ``req``'s program from the turn it is at (the policy's question)."""
        return self.predict(
            agent=req.program.agent, step=program_step(req), context=req.segment.prompt_tokens
        )


def capped(fp: Footprint, *, context: int, max_context: float) -> Footprint:
    """No context outgrows the engine: a prior from larger deployments (or a history learned
    elsewhere) must not hold the gate shut on a small engine."""
    if fp.peak <= max_context:
        return fp
    return Footprint(
        peak=max(max_context, float(context)),
        remaining_turns=fp.remaining_turns,
        growth=fp.growth,
    )
