from __future__ import annotations

import pytest

from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program, Segment


@pytest.fixture
def small_preset() -> Preset:
    """A GPT-J preset with a KV cache small enough that memory pressure is real."""
    return load_preset("a100-gptj6b", overrides={"gpu_kv_gb": 3.0, "host_swap_gb": 1.0})


def make_program(
    pid: str, turns: list[tuple[int, float, int]], *, prompt: int = 200, agent: str = "a"
) -> Program:
    """``turns``: (output tokens, tool seconds, returned tokens); the last turn's tool is ignored."""
    segments = []
    for i, (out, secs, ret) in enumerate(turns):
        last = i == len(turns) - 1
        segments.append(
            Segment(
                prompt_tokens=prompt,
                output_tokens=out,
                tool=None if last else "tool",
                tool_duration=0.0 if last else secs,
                returned_tokens=0 if last else ret,
            )
        )
        prompt += out + ret
    return Program(program_id=pid, agent=agent, segments=tuple(segments))
