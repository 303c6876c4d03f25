"""Requests and policies shared by the ``program`` policy's tests."""

from __future__ import annotations

from lamps_agent.policies import make_policy
from lamps_agent.policies.program import ProgramPolicy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program, Segment
from lamps_agent.request import Request
from lamps_agent.scheduler import Scheduler
from tests.core.conftest import make_program


def program_policy(preset: Preset, **options: object) -> tuple[ProgramPolicy, Scheduler]:
    """The registered ``program`` policy (oracle turn predictor) on a core scheduler."""
    policy = make_policy("program", predictor=make_predictor("oracle"), preset=preset, **options)
    assert isinstance(policy, ProgramPolicy)
    return policy, Scheduler(preset=preset, policy=policy)


def sim_request(rid: int, *, prompt: int = 2000, agent: str = "a") -> Request:
    """A four-turn program as the simulator sees it: one request for the whole program."""
    program = make_program(f"p{rid}", [(50, 1.0, 500)] * 4, prompt=prompt, agent=agent)
    return Request(request_id=rid, program=program, arrival_time=float(rid))


def serving_turn(rid: int, *, session: str, step: int, prompt: int, final: bool = False) -> Request:
    """A turn as the vLLM plug-in hands it to the core: a program of this turn alone (and a
    one-token turn after its predicted tool), named by its session and step."""
    first = Segment(
        prompt_tokens=prompt,
        output_tokens=50,
        tool=None if final else "tool",
        tool_duration=0.0 if final else 1.0,
    )
    segments = (first,) if final else (first, Segment(prompt_tokens=prompt + 50, output_tokens=1))
    program = Program(
        program_id=f"vllm-{rid}", agent="coder", segments=segments, session_id=session,
        first_step=step,
    )  # fmt: skip
    return Request(request_id=rid, program=program, arrival_time=0.0)
