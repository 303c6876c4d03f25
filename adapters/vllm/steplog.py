"""The served engine's step log: what each step scheduled and how long it took, as vLLM ran it.

With ``LAMPS_STEP_LOG=/path/steps.jsonl`` in a server's environment, the plug-in appends one JSON
line per engine step: when it started, what it scheduled (each request's scheduled tokens; the
step's prefill tokens, decoding sequences, resident KV tokens and prefill attention products — the
cost model's inputs), which requests it preempted, the KV blocks in use, and its wall time from
``schedule()`` to the end of ``update_from_output()`` (the model's forward in between).  A served
engine is then profiled as it serves (``lamps-agent profile --from-step-log``), with its process
layout, flags and connector, and a replay's steps can be compared with the simulator's.

No vLLM import: vLLM's objects are read by their attributes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from lamps_agent.steps import StepRecord, StepShape, read_step_log

__all__ = ["StepLog", "StepRecord", "StepShape", "describe", "read_step_log"]

log = logging.getLogger("lamps.vllm")


def describe(num_scheduled_tokens: Mapping[str, int], requests: Mapping[str, Any]) -> StepShape:
    """What a step scheduled, from vLLM's ``SchedulerOutput.num_scheduled_tokens`` and its
    requests, read after ``schedule()`` (which has already advanced ``num_computed_tokens``)."""
    prefill = prefills = decodes = resident = 0
    attn = 0.0
    for req_id, n in num_scheduled_tokens.items():
        req = requests.get(req_id)
        if req is None:
            continue
        before = req.num_computed_tokens - n
        resident += before
        # vLLM's own prefill boundary: a preempted request recomputes its output tokens as
        # prefill too (all but the last sampled one, which the decode after feeds back)
        if before < max(req.num_prompt_tokens, req.num_tokens - 1):
            prefill += n
            prefills += 1
            attn += n * (before + n / 2)
        else:
            decodes += 1
    return StepShape(prefill, decodes, resident, attn, prefills)


class StepLog:
    """Times each step between ``begin`` (schedule() starts) and ``end`` (update_from_output()
    returned) and appends its record.  Writing failures are logged once and counted, never
    raised into the engine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors = 0
        self._fh: TextIO | None = None
        self._step = 0
        self._pending: StepRecord | None = None
        self._start = 0.0

    def begin(self) -> None:
        self._start = time.perf_counter()
        self._pending = None

    def scheduled(self, out: Any, requests: Mapping[str, Any], used_blocks: int) -> None:
        tokens = dict(out.num_scheduled_tokens)
        if not tokens:
            return
        self._step += 1
        self._pending = StepRecord(
            step=self._step,
            t=time.time(),
            ms=0.0,
            shape=describe(tokens, requests),
            scheduled=tokens,
            preempted=sorted(getattr(out, "preempted_req_ids", None) or ()),
            used_blocks=used_blocks,
        )

    def end(self) -> None:
        record, self._pending = self._pending, None
        if record is None:
            return
        record.ms = (time.perf_counter() - self._start) * 1000.0
        try:
            if self._fh is None:
                self._fh = Path(self.path).open("a", buffering=1 << 16)  # noqa: SIM115 (kept open)
            self._fh.write(record.to_json() + "\n")
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.warning("lamps: cannot write the step log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
