"""``program``: program-aware admission and ranking (after WAIT) with per-call KV handling (LAMPS).

LAMPS decides per call and ranks per turn; WAIT admits by fluid-model thresholds but knows nothing
of tools.  This policy joins them at the level of the agent *program*:

* **Admission by a fluid-model threshold on predicted KV footprints.**  A program whose context
  grows from ``c`` to a predicted peak ``P`` holds ``(c + P) / 2`` tokens on average over the rest
  of its life (WAIT's ``prompt + output/2``, a linear growth at the level of turns).  A new program
  (its first turn) is admitted only while ``Σ (c + P)/2`` over the programs in flight whose KV
  is on the GPU (one in a tool with its KV swapped or discarded holds none), the newcomer
  included, stays under ``target_utilization × KV capacity`` — or while the KV in use
  plus the newcomer's predicted peak stays under ``open_below × capacity`` (work conservation at
  light load).  Later turns of admitted programs are never held behind new programs: they always
  sort ahead of them, and wait only until their whole context fits in free KV.  An engine with
  nothing running (or no program in flight) admits the head of the queue whatever its footprint.
* **The footprint is predicted** by a :class:`FootprintPredictor`: per agent, the turns per
  program and tokens added per turn of the programs that finished (online here; server-side it
  can be seeded from the tool registry's recorded turns), with a prior for agents never seen.
* **Program-level ranking** by the predicted remaining memory-time area of the whole program
  (LAMPS' area, summed over the predicted remaining turns), mapped to a handicap of at most
  ``max_age_s`` seconds: the key is ``enqueued_at + max_age_s · A / (A + A_ref)``, with ``A_ref``
  the running mean area.  Stated bound: a waiting request is never passed by one that entered
  its class more than ``max_age_s`` later (``turn_max_age_s`` for later turns) — aging, no hard
  starvation switch.  Both are measured unless given: one program lifetime and one turn's cycle
  (:meth:`ProgramPolicy.max_age`).
* **KV per call**: LAMPS' least-waste plan when the turn starts (it sets the turn's area); at the
  pause, the pin's time to live comes from the tool's duration distribution by Continuum's
  cost-benefit rule — pin for the ``τ`` that minimises ``C·E[min(T, τ)] + (1 − F(τ))·W_fallback``,
  ``W_fallback = min(W_discard, W_swap)``, if that beats not pinning (``W_fallback``), the pin's
  cost weighted by the measured share of pins given up under pressure, each a discard
  (:class:`PinLosses`); a pin that reaches its TTL is swapped or discarded, whichever wastes
  less.  The host tier is the preset's ``host_swap_gb``; a swapped turn is copied back in when
  its next turn is admitted (a copy ahead of the tool's return was dropped: vLLM's connector
  loads KV only for a scheduled request, and a decision one engine cannot carry out is made by
  neither).
* **Preemption** takes the most recently admitted program first, so programs in flight longest
  keep moving.
* **Only under KV pressure.**  The rules above engage while the time-averaged KV in use reaches
  ``engage_at`` of capacity or the time-averaged committed footprint reaches ``commit_at`` of the
  budget (:mod:`.load`); below both, the policy schedules exactly as ``lamps-aging``.
* **Sessions.**  A program is known by :func:`program_key`: the session where the engine names
  one (the vLLM plug-in's turns are requests of their own), else the request.

Deviations from both papers are listed in docs/scheduling.md ("`program`").

One concept per module: :mod:`.keys` (program identity, queue keys), :mod:`.footprint`
(footprint prediction), :mod:`.inflight` (the programs in flight and their committed footprint),
:mod:`.gate` (the admission gate), :mod:`.area` (remaining area and aging), :mod:`.load` (the
load estimate and engage switch), :mod:`.ttl` (tool durations and the pin's time to live), and
:mod:`.policy`, the policy composing them.
"""

from __future__ import annotations

from lamps_agent.policies.program.area import Aging, remaining_area
from lamps_agent.policies.program.footprint import Footprint, FootprintPredictor, TurnRecordLike
from lamps_agent.policies.program.gate import GatedPolicy, ProgramGate
from lamps_agent.policies.program.inflight import InFlight, ProgramsInFlight
from lamps_agent.policies.program.keys import ADMITTED, NEW, program_key, program_step
from lamps_agent.policies.program.load import RELEASE_FRACTION, EngageSwitch
from lamps_agent.policies.program.policy import ProgramPolicy
from lamps_agent.policies.program.ttl import (
    PinDeadlines,
    PinLosses,
    ToolDurations,
    ttl_by_cost_benefit,
)

__all__ = [
    "ADMITTED",
    "NEW",
    "RELEASE_FRACTION",
    "Aging",
    "EngageSwitch",
    "Footprint",
    "FootprintPredictor",
    "GatedPolicy",
    "InFlight",
    "PinDeadlines",
    "PinLosses",
    "ProgramGate",
    "ProgramPolicy",
    "ProgramsInFlight",
    "ToolDurations",
    "TurnRecordLike",
    "program_key",
    "program_step",
    "remaining_area",
    "ttl_by_cost_benefit",
]
