"""Engine step records: what one iteration scheduled and how long it took, in either engine.

The served vLLM engine writes them (``LAMPS_STEP_LOG``, :mod:`adapters.vllm.steplog`), the
virtual-clock engine and the simulator record them, and :mod:`lamps_agent.stepdiff` compares two
runs' records step by step.  One JSON line per step::

    {"step": 1, "t": 0.0, "ms": 12.5, "scheduled": {"3.0": 387}, "preempted": [],
     "used_blocks": 13, "prefill_tokens": 387, "prefill_seqs": 1, "decode_seqs": 0,
     "resident_kv_tokens": 0, "attn_products": 74884.5}

``scheduled`` maps a request to the tokens the step computed for it.  The simulator and the
virtual-clock engine name a request ``PROGRAM.TURN`` (the program's index in the arrivals and the
turn's index in the program), so their records compare request by request; a served engine's ids
are vLLM's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StepShape:
    """The cost model's inputs for one step (:class:`~lamps_agent.cost_model.CostModel`)."""

    prefill_tokens: int = 0
    decode_seqs: int = 0
    resident_kv_tokens: int = 0
    attn_products: float = 0.0  # Σ chunk × (context before the chunk + chunk / 2)
    prefill_seqs: int = 0  # requests the step prefills (each a chunk)


@dataclass(slots=True)
class StepRecord:
    step: int
    t: float  # when the step started (wall clock, or the engine's virtual clock)
    ms: float  # how long it took
    shape: StepShape
    scheduled: dict[str, int] = field(default_factory=dict)  # request -> tokens computed
    preempted: list[str] = field(default_factory=list)
    used_blocks: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data.update(data.pop("shape"))
        return json.dumps(data, separators=(",", ":"))


def request_key(program_index: int, turn: int) -> str:
    """How the simulator and the virtual-clock engine name a turn in ``scheduled``."""
    return f"{program_index}.{turn}"


def read_step_log(path: Path) -> list[StepRecord]:
    """The records of a step log; a malformed line is an error naming the file and line.  A log
    written before ``prefill_seqs`` was recorded has it derived: every scheduled request that is
    not decoding is prefilling."""
    records = []
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                decodes = int(data.pop("decode_seqs"))
                scheduled = data.get("scheduled", {})
                derived = max(len(scheduled) - decodes, 0)
                shape = StepShape(
                    prefill_tokens=int(data.pop("prefill_tokens")),
                    decode_seqs=decodes,
                    resident_kv_tokens=int(data.pop("resident_kv_tokens")),
                    attn_products=float(data.pop("attn_products")),
                    prefill_seqs=int(data.pop("prefill_seqs", derived)),
                )
                records.append(StepRecord(shape=shape, **data))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not a step record ({exc})") from None
    return records


def write_step_log(path: Path, records: list[StepRecord]) -> None:
    path.write_text("".join(r.to_json() + "\n" for r in records))
