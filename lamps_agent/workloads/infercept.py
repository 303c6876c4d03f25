"""Loading INFERCEPT-format traces (``{conversation_id: [segment, ...]}``) into agent programs.

Two segment forms occur.  Token form: ``prompt_tokens``, ``completion_tokens``, ``api_time``,
``api_token_length``.  Text form: ``prompt``, ``completion``, ``api_token``, ``api_time`` (seconds,
possibly a string) — counted with :func:`default_tokenizer`.  The last segment normally has no ``api_*``; where it has (184 text-form conversations of the
multi-API file do), that trailing call is dropped: no turn follows it, so it costs the engine nothing.

The trace names no tools; they are inferred (an explicit ``"tool"`` key on a segment wins):
token-form conversations with 32-hex ids are GSM8K math (``calculator``, sub-10 ms calls) or
HotpotQA (``wikipedia``); other token-form ids are ALFWorld (``alfworld``); text-form calls whose
API text asks for speech are ``tts``, for an image ``image_gen``, and the rest are a human's reply
(``human``).

Contexts are made consistent: segment k+1's prompt is at least segment k's prompt + completion +
API return.  Token-form traces already satisfy this; text-form prompts are truncated in the trace,
so their prompt is raised to the accumulated context and the return set to the difference.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lamps_agent.errors import TraceError
from lamps_agent.program import Program, Segment
from lamps_agent.workloads.schema import Violation, trace_schema, violations
from lamps_agent.workloads.tokenizer import Tokenizer, default_tokenizer

BUILTIN_TRACES = {
    "multi-api": "merged_exp_uniform.json",
    "single-api": "diverse_oneapi_merged_exp_uniform.json",
}
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_AGENT_OF_TOOL = {"calculator": "math", "wikipedia": "qa", "alfworld": "alfworld"}


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    programs: tuple[Program, ...]
    tokenizer: str | None  # which tokenizer counted text-form segments, if any

    def __len__(self) -> int:
        return len(self.programs)


def resolve_trace_path(spec: str | Path) -> Path:
    """A file path, or one of the built-in names (``multi-api``, ``single-api``)."""
    if isinstance(spec, str) and spec in BUILTIN_TRACES:
        ref = resources.files("lamps_agent") / "data" / BUILTIN_TRACES[spec]
        return Path(str(ref))
    return Path(spec)


def not_a_trace(spec: str | Path, builtins: list[str]) -> str:
    """The message for a trace that is neither a file nor a built-in: lists ``builtins``, and the
    closest of them if ``spec`` looks like a typo of one."""
    close = difflib.get_close_matches(str(spec), builtins, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{spec}: neither a trace file nor a built-in trace ({', '.join(builtins)}){hint}"


def load_trace(spec: str | Path, *, tokenizer: Tokenizer | None = None) -> Trace:
    """Load a trace file or a built-in trace, checked against ``trace.schema.json`` first (the
    format: docs/traces.md); a :class:`TraceError` names the file and the offending entry."""
    path = resolve_trace_path(spec)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TraceError(not_a_trace(spec, list(BUILTIN_TRACES))) from exc
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise TraceError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise TraceError(f"{path}: expected a non-empty object {{conversation_id: [segments]}}")
    violation = next(violations(raw, trace_schema()), None)
    if violation is not None:
        raise TraceError(f"{path}: {_described(violation)}")
    used_tokenizer: Tokenizer | None = None
    programs = []
    for cid, segments in raw.items():
        where = f"{path}: conversation {cid!r}"
        if not isinstance(segments, list) or not segments:
            raise TraceError(f"{where}: expected a non-empty list of segments")
        if any(_is_text_form(s) for s in segments if isinstance(s, dict)):
            used_tokenizer = used_tokenizer or tokenizer or default_tokenizer()
        programs.append(_load_program(str(cid), segments, where, used_tokenizer))
    return Trace(
        name=path.stem,
        programs=tuple(programs),
        tokenizer=used_tokenizer.name if used_tokenizer else None,
    )


def _described(violation: Violation) -> str:
    """``conversation 'c1' segment 0: 'prompt_tokens' must be an integer, got '5'``."""
    names = ("conversation {!r}", "segment {}")
    where = [name.format(key) for name, key in zip(names, violation.path, strict=False)]
    subject = [repr(key) for key in violation.path[2:]]  # the field
    return f"{' '.join(where)}: {' '.join([*subject, violation.problem])}"


def _is_text_form(seg: dict[str, Any]) -> bool:
    return "prompt" in seg and "prompt_tokens" not in seg


@dataclass(slots=True)
class _RawTurn:
    prompt: int
    output: int
    tool: str | None
    duration: float
    returned: int


def _load_program(cid: str, segments: list[Any], where: str, tok: Tokenizer | None) -> Program:
    turns: list[_RawTurn] = []
    last = len(segments) - 1
    api_times = [_api_time(s, f"{where} segment {i}") for i, s in enumerate(segments[:-1])]
    mean_api = sum(api_times) / len(api_times) if api_times else 0.0
    for i, seg in enumerate(segments):
        at = f"{where} segment {i}"
        if not isinstance(seg, dict):
            raise TraceError(f"{at}: expected an object, got {type(seg).__name__}")
        turns.append(_load_turn(cid, seg, at, tok, api_times[i] if i < last else None, mean_api))
    for i in range(1, len(turns)):  # make contexts consistent (see module docstring)
        prev = turns[i - 1]
        context = prev.prompt + prev.output + prev.returned
        if turns[i].prompt < context:
            turns[i].prompt = context
        prev.returned = turns[i].prompt - prev.prompt - prev.output
    agent = _agent_of(cid, turns)
    try:
        return Program(
            program_id=cid,
            agent=agent,
            segments=tuple(
                Segment(
                    prompt_tokens=t.prompt,
                    output_tokens=t.output,
                    tool=t.tool,
                    tool_duration=t.duration,
                    returned_tokens=t.returned,
                )
                for t in turns
            ),
        )
    except ValueError as exc:
        raise TraceError(f"{where}: {exc}") from exc


def _load_turn(
    cid: str,
    seg: dict[str, Any],
    at: str,
    tok: Tokenizer | None,
    api_time: float | None,
    mean_api: float,
) -> _RawTurn:
    if _is_text_form(seg):
        assert tok is not None
        prompt = tok.count(_text(seg, "prompt", at))
        output = tok.count(_text(seg, "completion", at))
        api_text = _text(seg, "api_token", at) if api_time is not None else ""
        returned = tok.count(api_text) if api_time is not None else 0
        tool = seg.get("tool") or (_text_tool(api_text) if api_time is not None else None)
    else:
        prompt = _count(seg, "prompt_tokens", at)
        output = _count(seg, "completion_tokens", at)
        returned = _count(seg, "api_token_length", at) if api_time is not None else 0
        tool = seg.get("tool") or (_token_tool(cid, mean_api) if api_time is not None else None)
    if tool is not None and (not isinstance(tool, str) or not tool):
        raise TraceError(f"{at}: 'tool' must be a non-empty string")
    return _RawTurn(
        prompt=max(prompt, 1),
        output=max(output, 1),
        tool=tool,
        duration=api_time or 0.0,
        returned=returned,
    )


def _count(seg: dict[str, Any], key: str, at: str) -> int:
    value = seg.get(key)
    if isinstance(value, float) and value.is_integer():  # JSON Schema's integer: 5.0 is one
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceError(f"{at}: {key!r} must be an integer, got {value!r}")
    if value < 0:
        raise TraceError(f"{at}: {key!r} must be >= 0, got {value}")
    return value


def _text(seg: dict[str, Any], key: str, at: str) -> str:
    value = seg.get(key)
    if not isinstance(value, str):
        raise TraceError(f"{at}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _api_time(seg: Any, at: str) -> float:
    if not isinstance(seg, dict) or "api_time" not in seg:
        raise TraceError(f"{at}: every segment but the last needs 'api_time'")
    value = seg["api_time"]
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise TraceError(f"{at}: 'api_time' must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise TraceError(f"{at}: 'api_time' must be finite and >= 0, got {value!r}")
    return seconds


def _token_tool(cid: str, mean_api_time: float) -> str:
    if _HEX_ID.match(cid):
        return "calculator" if mean_api_time < 0.01 else "wikipedia"
    return "alfworld"


def _text_tool(api_text: str) -> str:
    lowered = api_text.strip().lower()
    if lowered.startswith("convert this to text to speech"):
        return "tts"
    if lowered.startswith("generate an image"):
        return "image_gen"
    return "human"


def _agent_of(cid: str, turns: list[_RawTurn]) -> str:
    tools = {t.tool for t in turns if t.tool}
    for tool, agent in _AGENT_OF_TOOL.items():
        if tool in tools:
            return agent
    if "tts" in tools:
        return "chat_tts"
    if "image_gen" in tools:
        return "chat_image"
    return "chatbot"
