"""Agent programs: what an agent asks of the engine, one segment per model turn.

A segment is one model call: the whole context is (re-)sent as the prompt, the model generates
``output_tokens`` tokens, and — except in the last segment — the agent then calls a tool that takes
``tool_duration`` seconds and returns ``returned_tokens`` tokens, which are appended to the context
of the next segment.  So ``next.prompt_tokens == prompt_tokens + output_tokens + returned_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_MAX_TOKENS = 10_000_000  # beyond any real context: catches unit mix-ups and garbage


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= _MAX_TOKENS:
        raise ValueError(f"{name} must be in [{minimum}, {_MAX_TOKENS}], got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """One model turn of an agent program, optionally ending in a tool call."""

    prompt_tokens: int
    output_tokens: int
    tool: str | None = None
    tool_duration: float = 0.0
    returned_tokens: int = 0

    def __post_init__(self) -> None:
        _check_count("prompt_tokens", self.prompt_tokens, minimum=1)
        _check_count("output_tokens", self.output_tokens, minimum=1)
        _check_count("returned_tokens", self.returned_tokens, minimum=0)
        if not math.isfinite(self.tool_duration) or self.tool_duration < 0:
            raise ValueError(f"tool_duration must be finite and >= 0, got {self.tool_duration}")
        if self.tool is None and (self.tool_duration or self.returned_tokens):
            raise ValueError("a segment without a tool cannot have a tool duration or return")
        if self.tool is not None and not self.tool:
            raise ValueError("tool name must not be empty")

    @property
    def has_tool_call(self) -> bool:
        return self.tool is not None

    @property
    def context_at_pause(self) -> int:
        """Context tokens (prompt + generated) when the tool call starts."""
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """An agent program: ordered segments; every segment but the last ends in a tool call.

    A serving engine sees one turn of a session at a time: the vLLM plug-in makes each turn a
    program of its own, with ``session_id`` naming the agent session it belongs to and
    ``first_step`` its turn index in that session, so that a policy can link a session's turns
    (``session_key`` and ``step_of``).  In the simulator a program is the whole session.
    ``tenant`` names the client that sent it (hints are that client's word: docs/scheduling.md,
    "Hints are untrusted").
    """

    program_id: str
    agent: str
    segments: tuple[Segment, ...]
    session_id: str | None = None
    first_step: int = 0
    tenant: str | None = None  # the client it came from; None: the one tenant of a deployment

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"program {self.program_id!r} has no segments")
        if self.session_id is not None and not self.session_id:
            raise ValueError(f"program {self.program_id!r}: session_id must not be empty")
        if self.tenant is not None and not self.tenant:
            raise ValueError(f"program {self.program_id!r}: tenant must not be empty")
        _check_count("first_step", self.first_step, minimum=0)
        for i, seg in enumerate(self.segments[:-1]):
            if not seg.has_tool_call:
                raise ValueError(
                    f"program {self.program_id!r}: segment {i} is not last but has no tool"
                )
            following = self.segments[i + 1].prompt_tokens
            expected = seg.context_at_pause + seg.returned_tokens
            if following != expected:
                raise ValueError(
                    f"program {self.program_id!r}: segment {i + 1} prompt is {following} tokens, "
                    f"expected {expected} (prompt + output + returned of segment {i})"
                )
        if self.segments[-1].has_tool_call:
            raise ValueError(f"program {self.program_id!r}: the last segment must not call a tool")

    @property
    def total_output_tokens(self) -> int:
        return sum(s.output_tokens for s in self.segments)

    @property
    def total_tool_time(self) -> float:
        return sum(s.tool_duration for s in self.segments)

    @property
    def num_tool_calls(self) -> int:
        return len(self.segments) - 1
