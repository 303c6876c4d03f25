"""Long-context agent workloads: coding agents, API tool-use agents, chat assistants with tools.

The INFERCEPT traces are short (hundreds of tokens of context, a few calls).  Agents people run
now carry tens of thousands of tokens: a coding agent re-sends the whole trajectory each turn and
appends every file view and test log to it.  This generator draws programs of three kinds whose
statistics follow public characterisations of real agent traces (sources and what each number is:
docs/scheduling.md, "Workloads", long-context agents):

* ``coding`` — SWE-agent / OpenHands style: a ~4k-token system prompt and issue, about 12 tool
  calls (median 8 turns / 15 tool calls in one public session study; < 19 to > 40 steps per
  SWE-bench task across agents), ~250 generated tokens per turn, heavy-tailed observations
  (mean ~3.5k tokens, file views and test logs up to 16k), so contexts grow from ~4k to 40–60k
  and a tail to the 128k limit; tools are sub-second shell commands with a tail of test runs
  (seconds to minutes) and, rarely, an operator who steps away;
* ``tool-use`` — BFCL / ToolBench style: ~2k tokens of function schemas, ~4 API calls per task
  (ToolBench: 469,585 calls over 126,486 instances), short JSON calls (~80 tokens) and responses
  (~400 tokens), web-API latencies with a log-normal tail;
* ``chat`` — a chat assistant with tools: a person replies between turns (idle gaps with a median
  of ~7 s and a tail to minutes), sometimes a search tool runs instead.

Every program stops before its context passes ``max_context`` (128k by default): the turn that
would cross it becomes the last.  Deterministic by seed: the same (kinds, n, seed) gives the same
programs.  The result is the same :class:`~lamps_agent.program.Program` objects the INFERCEPT
loader produces, so every policy, the simulator and the replay take them unchanged.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.program import Program, Segment

MAX_CONTEXT = 131_072  # 128k tokens: Llama-3.1's context window


@dataclass(frozen=True, slots=True, kw_only=True)
class LogNormal:
    """A log-normal by its median and log-space sigma, clipped to ``[low, high]``."""

    median: float
    sigma: float
    low: float = 0.0
    high: float = math.inf

    def __post_init__(self) -> None:
        if not self.median > 0 or self.sigma < 0 or not self.low <= self.median <= self.high:
            raise ValueError(f"bad log-normal {self}")

    @property
    def mean(self) -> float:
        """The unclipped mean, ``median · exp(sigma² / 2)``."""
        return self.median * math.exp(self.sigma**2 / 2)

    def draw(self, rng: random.Random) -> float:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return min(max(value, self.low), self.high)

    def tokens(self, rng: random.Random) -> int:
        return max(1, round(self.draw(rng)))


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolProfile:
    """One tool an agent calls: how often, how long it takes, how many tokens it returns."""

    name: str
    weight: float
    duration: LogNormal  # seconds
    returned: LogNormal  # tokens appended to the context

    def __post_init__(self) -> None:
        if not self.name or not self.weight > 0:
            raise ValueError(f"tool {self.name!r}: needs a name and a positive weight")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentKind:
    """A kind of agent program: its first prompt, calls per program, outputs and tools."""

    agent: str
    prompt: LogNormal
    calls: LogNormal  # tool calls per program (rounded, at least calls.low)
    output: LogNormal  # tokens generated per turn
    tools: tuple[ToolProfile, ...]

    def __post_init__(self) -> None:
        if not self.tools:
            raise ValueError(f"{self.agent}: needs at least one tool")

    def pick_tool(self, rng: random.Random) -> ToolProfile:
        return rng.choices(self.tools, [t.weight for t in self.tools])[0]


CODING = AgentKind(
    agent="coding-agent",
    prompt=LogNormal(median=3800, sigma=0.3, low=1500, high=12_000),
    calls=LogNormal(median=11, sigma=0.55, low=3, high=60),
    output=LogNormal(median=210, sigma=0.6, low=20, high=2_000),
    tools=(
        # ls / cat / grep / edit: sub-second, observations of a file view or a diff
        ToolProfile(
            name="shell",
            weight=0.80,
            duration=LogNormal(median=0.35, sigma=0.9, low=0.01, high=30.0),
            returned=LogNormal(median=1800, sigma=1.0, low=20, high=16_000),
        ),
        # running the tests: seconds to minutes, long logs
        ToolProfile(
            name="run_tests",
            weight=0.17,
            duration=LogNormal(median=6.0, sigma=1.0, low=0.5, high=300.0),
            returned=LogNormal(median=2500, sigma=0.9, low=50, high=16_000),
        ),
        # an operator who reviews or steps away (the long-pause tail of agent traces)
        ToolProfile(
            name="human_review",
            weight=0.03,
            duration=LogNormal(median=45.0, sigma=1.2, low=3.0, high=900.0),
            returned=LogNormal(median=80, sigma=0.8, low=5, high=2_000),
        ),
    ),
)

TOOL_USE = AgentKind(
    agent="tool-use",
    prompt=LogNormal(median=1900, sigma=0.35, low=400, high=8_000),
    calls=LogNormal(median=3.5, sigma=0.5, low=1, high=15),
    output=LogNormal(median=75, sigma=0.5, low=10, high=600),
    tools=(
        ToolProfile(
            name="web_api",
            weight=0.85,
            duration=LogNormal(median=0.6, sigma=0.8, low=0.02, high=30.0),
            returned=LogNormal(median=300, sigma=0.8, low=10, high=8_000),
        ),
        ToolProfile(
            name="retrieval",
            weight=0.15,
            duration=LogNormal(median=0.15, sigma=0.5, low=0.01, high=5.0),
            returned=LogNormal(median=900, sigma=0.6, low=50, high=8_000),
        ),
    ),
)

CHAT = AgentKind(
    agent="chat-with-tools",
    prompt=LogNormal(median=900, sigma=0.5, low=100, high=6_000),
    calls=LogNormal(median=5, sigma=0.6, low=1, high=30),
    output=LogNormal(median=300, sigma=0.6, low=10, high=2_000),
    tools=(
        # the person's next message: the idle gap is their reading and typing time
        ToolProfile(
            name="human",
            weight=0.75,
            duration=LogNormal(median=7.2, sigma=0.75, low=1.0, high=600.0),
            returned=LogNormal(median=60, sigma=0.9, low=2, high=2_000),
        ),
        ToolProfile(
            name="web_search",
            weight=0.25,
            duration=LogNormal(median=1.2, sigma=0.6, low=0.1, high=20.0),
            returned=LogNormal(median=1500, sigma=0.5, low=100, high=8_000),
        ),
    ),
)

KINDS: dict[str, AgentKind] = {"coding": CODING, "tool-use": TOOL_USE, "chat": CHAT}
MIX: dict[str, float] = {"coding": 0.5, "tool-use": 0.3, "chat": 0.2}
"""The default mix (``longctx``): half coding agents, the rest API agents and chat assistants."""


def parse_kinds(spec: str) -> dict[str, float]:
    """``"coding"``, ``"coding,chat"`` or ``"mix"`` / ``""`` → kind weights."""
    if spec in ("", "mix"):
        return dict(MIX)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise ValueError(
            f"unknown long-context kind(s) {', '.join(unknown) or spec!r}; "
            f"valid: {', '.join(KINDS)} or mix"
        )
    return {n: 1.0 for n in names}


def _program(kind: AgentKind, rng: random.Random, program_id: str, max_context: int) -> Program:
    calls = max(round(kind.calls.draw(rng)), int(kind.calls.low))
    prompt = min(kind.prompt.tokens(rng), max_context // 4)
    segments: list[Segment] = []
    for k in range(calls + 1):
        output = kind.output.tokens(rng)
        if k < calls:
            tool = kind.pick_tool(rng)
            duration = tool.duration.draw(rng)
            returned = tool.returned.tokens(rng)
            following = prompt + output + returned
            # The next turn would not fit: this one is the last (a context-limited stop).
            if following + kind.output.high <= max_context:
                segments.append(
                    Segment(
                        prompt_tokens=prompt,
                        output_tokens=output,
                        tool=tool.name,
                        tool_duration=duration,
                        returned_tokens=returned,
                    )
                )
                prompt = following
                continue
        segments.append(Segment(prompt_tokens=prompt, output_tokens=output))
        break
    return Program(program_id=program_id, agent=kind.agent, segments=tuple(segments))


def generate_longctx(
    n: int,
    *,
    kinds: str | dict[str, float] = "mix",
    seed: int = 0,
    max_context: int = MAX_CONTEXT,
) -> list[Program]:
    """``n`` long-context agent programs of the given kinds (names → weights, or a spec for
    :func:`parse_kinds`), deterministic by ``seed``, no context above ``max_context`` tokens."""
    if n < 1:
        raise ValueError("need n >= 1 programs")
    if max_context < 8_192:
        raise ValueError(f"max_context must be >= 8192 tokens, got {max_context}")
    weights = parse_kinds(kinds) if isinstance(kinds, str) else dict(kinds)
    if not weights or any(k not in KINDS or not w > 0 for k, w in weights.items()):
        raise ValueError(f"kinds must map names from {', '.join(KINDS)} to positive weights")
    names: Sequence[str] = sorted(weights)
    rng = random.Random(f"longctx-{seed}")
    programs = []
    for i in range(n):
        name = rng.choices(names, [weights[k] for k in names])[0]
        programs.append(_program(KINDS[name], rng, f"{name}-{seed}-{i}", max_context))
    return programs


def peak_context(program: Program) -> int:
    """The largest context a program reaches: its last prompt plus its last output."""
    last = program.segments[-1]
    return last.prompt_tokens + last.output_tokens
