"""Training data: turn records from INFERCEPT-format traces and from turn-record JSONL files.

Turn-record JSONL (what ``lamps-agent predictor train --jsonl`` reads; one object per line)::

    {"agent": "chatbot", "step": 0, "tool": "search", "prompt_tokens": 812,
     "output_tokens": 57, "prompt_text": "...", "conversation": "c-42"}

``agent`` (str), ``step`` (int >= 0), ``tool`` (str, or null for a final turn), ``prompt_tokens``
and ``output_tokens`` (int >= 0 / >= 1) are required.  ``prompt_text`` is optional (stored only
where the user opted in; without it the model uses the cheap features alone).  ``conversation``
is optional; turns that share it are never split between train and test (without it, each line is
its own conversation).  Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamps_agent.predictors.learned.features import TurnRecord
from lamps_agent.workloads.infercept import load_trace, resolve_trace_path

_COPY_SUFFIX = re.compile(r"_\d+$")


def conversation_group(program_id: str) -> str:
    """The multi-API trace repeats each text conversation as ``id``, ``id_1``, ``id_2`` (chatbot,
    TTS, image) with the same opening turns: they form one group, so a split cannot leak them."""
    return _COPY_SUFFIX.sub("", program_id)


def trace_texts(spec: str | Path) -> dict[tuple[str, int], str]:
    """``(program_id, step) -> prompt text`` for the text-form segments of a trace."""
    raw = json.loads(resolve_trace_path(spec).read_text())
    texts: dict[tuple[str, int], str] = {}
    for cid, segments in raw.items():
        for step, seg in enumerate(segments):
            if isinstance(seg, dict) and isinstance(seg.get("prompt"), str):
                texts[(str(cid), step)] = seg["prompt"]
    return texts


def trace_records(spec: str | Path) -> list[TurnRecord]:
    """Every turn of a trace; token counts exactly as the simulator sees them, text where the
    segment is in text form."""
    trace = load_trace(spec)
    texts = trace_texts(spec)
    return [
        TurnRecord(
            agent=program.agent,
            step=step,
            tool=seg.tool,
            prompt_tokens=seg.prompt_tokens,
            output_tokens=seg.output_tokens,
            prompt_text=texts.get((program.program_id, step)),
            group=f"{trace.name}:{conversation_group(program.program_id)}",
        )
        for program in trace.programs
        for step, seg in enumerate(program.segments)
    ]


def jsonl_records(path: str | Path) -> list[TurnRecord]:
    """Turn records from a JSONL file (format in the module docstring); a bad line raises
    ``ValueError`` naming the line."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            records.append(_record(json.loads(line), default_group=f"{path.name}:{lineno}"))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}:{lineno}: bad turn record: {exc}") from None
    return records


def _record(obj: Any, *, default_group: str) -> TurnRecord:
    if not isinstance(obj, dict):
        raise TypeError("expected a JSON object")
    agent, tool, text = obj["agent"], obj.get("tool"), obj.get("prompt_text")
    if not isinstance(agent, str) or not agent:
        raise ValueError("'agent' must be a non-empty string")
    if tool is not None and (not isinstance(tool, str) or not tool):
        raise ValueError("'tool' must be a non-empty string or null")
    if text is not None and not isinstance(text, str):
        raise ValueError("'prompt_text' must be a string or null")
    return TurnRecord(
        agent=agent,
        step=_int(obj, "step", 0),
        tool=tool,
        prompt_tokens=_int(obj, "prompt_tokens", 0),
        output_tokens=_int(obj, "output_tokens", 1),
        prompt_text=text,
        group=str(obj.get("conversation", default_group)),
    )


def _int(obj: dict[str, Any], key: str, minimum: int) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def split_by_group(
    records: Sequence[TurnRecord], *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[TurnRecord], list[TurnRecord]]:
    """(train, test): whole conversation groups go to test, chosen by a seeded shuffle."""
    groups = sorted({r.group for r in records})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    n_test = max(1, round(len(groups) * test_fraction)) if len(groups) > 1 else 0
    test_groups = {groups[i] for i in order[:n_test]}
    train = [r for r in records if r.group not in test_groups]
    test = [r for r in records if r.group in test_groups]
    return train, test


def fold_groups(records: Sequence[TurnRecord], *, folds: int, seed: int = 0) -> dict[str, int]:
    """Each conversation group's fold (0..folds-1), by a seeded shuffle."""
    groups = sorted({r.group for r in records})
    order = np.random.default_rng(seed).permutation(len(groups))
    return {groups[j]: rank % folds for rank, j in enumerate(order)}


def data_hash(records: Iterable[TurnRecord]) -> str:
    """A SHA-256 over the records' content (saved in the manifest)."""
    digest = hashlib.sha256()
    for r in records:
        row = [r.agent, r.step, r.tool, r.prompt_tokens, r.output_tokens, r.prompt_text, r.group]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()
