"""A synthetic generator of agent program types, for workloads no trace covers.

Each :class:`ProgramType` draws the number of tool calls, prompt and output lengths, tool durations
and returned tokens from simple distributions; :data:`INFERCEPT_LIKE` imitates the six program types
of the INFERCEPT multi-API trace (its measured means).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from lamps_agent.program import Program, Segment


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramType:
    agent: str
    tool: str
    weight: float = 1.0
    calls_min: int = 1
    calls_max: int = 3
    prompt_mean: float = 400
    output_mean: float = 60
    tool_mean: float = 1.0  # seconds, log-normal with the given coefficient of variation
    tool_cv: float = 0.5
    returned_mean: float = 30

    def __post_init__(self) -> None:
        if self.calls_min < 0 or self.calls_max < self.calls_min:
            raise ValueError(f"{self.agent}: need 0 <= calls_min <= calls_max")
        if min(self.prompt_mean, self.output_mean, self.weight) <= 0 or self.tool_mean < 0:
            raise ValueError(f"{self.agent}: means and weight must be positive")


INFERCEPT_LIKE: tuple[ProgramType, ...] = (
    ProgramType(
        agent="math",
        tool="calculator",
        weight=99,
        calls_min=1,
        calls_max=4,
        prompt_mean=450,
        output_mean=70,
        tool_mean=1e-4,
        tool_cv=0.2,
        returned_mean=22,
    ),
    ProgramType(
        agent="qa",
        tool="wikipedia",
        weight=49,
        calls_min=1,
        calls_max=5,
        prompt_mean=700,
        output_mean=40,
        tool_mean=0.72,
        tool_cv=0.3,
        returned_mean=120,
    ),
    ProgramType(
        agent="alfworld",
        tool="alfworld",
        weight=54,
        calls_min=3,
        calls_max=8,
        prompt_mean=900,
        output_mean=15,
        tool_mean=0.09,
        tool_cv=0.2,
        returned_mean=25,
    ),
    ProgramType(
        agent="chatbot",
        tool="human",
        weight=65,
        calls_min=2,
        calls_max=8,
        prompt_mean=300,
        output_mean=150,
        tool_mean=28.0,
        tool_cv=0.6,
        returned_mean=40,
    ),
    ProgramType(
        agent="chat_tts",
        tool="tts",
        weight=65,
        calls_min=2,
        calls_max=6,
        prompt_mean=300,
        output_mean=120,
        tool_mean=6.0,
        tool_cv=0.3,
        returned_mean=10,
    ),
    ProgramType(
        agent="chat_image",
        tool="image_gen",
        weight=65,
        calls_min=2,
        calls_max=6,
        prompt_mean=300,
        output_mean=120,
        tool_mean=11.5,
        tool_cv=0.3,
        returned_mean=10,
    ),
)


def _lognormal(rng: random.Random, mean: float, cv: float) -> float:
    if mean <= 0:
        return 0.0
    sigma2 = math.log(1 + cv * cv)
    return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))


def _tokens(rng: random.Random, mean: float) -> int:
    return max(1, round(rng.expovariate(1 / mean)))


def generate_programs(
    n: int, *, types: tuple[ProgramType, ...] = INFERCEPT_LIKE, seed: int = 0
) -> list[Program]:
    if n < 1 or not types:
        raise ValueError("need n >= 1 and at least one program type")
    rng = random.Random(f"synthetic-{seed}")
    weights = [t.weight for t in types]
    programs = []
    for i in range(n):
        kind = rng.choices(types, weights)[0]
        calls = rng.randint(kind.calls_min, kind.calls_max)
        segments = []
        prompt = _tokens(rng, kind.prompt_mean)
        for k in range(calls + 1):
            output = _tokens(rng, kind.output_mean)
            if k == calls:
                segments.append(Segment(prompt_tokens=prompt, output_tokens=output))
                break
            returned = _tokens(rng, kind.returned_mean)
            segments.append(
                Segment(
                    prompt_tokens=prompt,
                    output_tokens=output,
                    tool=kind.tool,
                    tool_duration=_lognormal(rng, kind.tool_mean, kind.tool_cv),
                    returned_tokens=returned,
                )
            )
            prompt += output + returned
        programs.append(Program(program_id=f"syn-{i}", agent=kind.agent, segments=tuple(segments)))
    return programs
