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
  starvation switch.
* **KV per call**: LAMPS' least-waste plan when the turn starts (it sets the turn's area); at the
  pause, the pin's time to live comes from the tool's duration distribution by Continuum's
  cost-benefit rule — pin for the ``τ`` that minimises ``C·E[min(T, τ)] + (1 − F(τ))·W_fallback``,
  ``W_fallback = min(W_discard, W_swap)``, if that beats not pinning (``W_fallback``); a pin that
  reaches its TTL is swapped or discarded, whichever wastes less.  The host tier is the preset's
  ``host_swap_gb``; a swapped turn is copied back in when its next turn is admitted (a copy
  ahead of the tool's return was dropped: vLLM's connector loads KV only for a scheduled
  request, and a decision one engine cannot carry out is made by neither).
* **Preemption** takes the most recently admitted program first, so programs in flight longest
  keep moving.
* **Only under KV pressure.**  The rules above engage while the time-averaged KV in use reaches
  ``engage_at`` of capacity or the time-averaged committed footprint reaches ``commit_at`` of the
  budget (:meth:`_update_load`); below both, the policy schedules exactly as ``lamps-aging``.
* **Sessions.**  A program is known by :func:`program_key`: the session where the engine names
  one (the vLLM plug-in's turns are requests of their own), else the request.

Deviations from both papers are listed in docs/scheduling.md ("`program`").
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lamps_agent.area import area_decode, area_prefill
from lamps_agent.policies.base import AdmissionGate, predicted_turn
from lamps_agent.policies.lamps import LampsPolicy
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.strategy import pick_least, strategy_wastes

NEW, ADMITTED = 1.0, 0.0  # the key's class: later turns of admitted programs sort first
RELEASE_FRACTION = 0.8  # the rules release below 0.8 x engage_at (hysteresis)


def program_key(req: Request) -> Hashable:
    """The program a request is a turn of: its session where the engine names one (the vLLM
    plug-in makes each turn a request of its own), else the request (the simulator's request is
    the whole program)."""
    session = req.program.session_id
    return req.request_id if session is None else session


def program_step(req: Request) -> int:
    """The turn's index in its program (its session's turn count where the engine names it)."""
    return req.program.first_step + req.seg_index


# -- the footprint predictor -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Footprint:
    """A program's predicted future: its peak context and how many turns remain (this one in)."""

    peak: float
    remaining_turns: float
    growth: float  # tokens a turn adds (output + tool return)


@dataclass(slots=True)
class _AgentHistory:
    turns: deque[int] = field(default_factory=lambda: deque(maxlen=512))
    growth_sum: float = 0.0
    growth_n: int = 0

    def add(self, turns: int, growth: float) -> None:
        self.turns.append(turns)
        self.growth_sum += growth
        self.growth_n += 1


class TurnRecordLike(Protocol):
    """What :meth:`FootprintPredictor.seed_from_turns` reads (the tool registry's
    ``TurnRecord`` has these fields)."""

    agent: str
    step: int
    output_tokens: int
    prompt_tokens: int | None
    session_id: str | None


class FootprintPredictor:
    """Per-agent history of context growth: turns per program and tokens per turn.

    Fed by finished programs (:meth:`observe`); :meth:`predict` gives the peak context of a program
    at turn ``step`` with context ``context``: ``context + R · g`` with ``R = E[T − step | T >
    step]`` over the agent's observed turn counts ``T`` and ``g`` its mean tokens per turn.  An
    agent with fewer than ``min_programs`` finished programs uses the prior (``prior_turns``,
    ``prior_growth``).
    """

    def __init__(
        self,
        *,
        prior_turns: float = 8.0,
        prior_growth: float = 1500.0,
        min_programs: int = 3,
    ) -> None:
        if not prior_turns >= 1 or not prior_growth >= 0 or min_programs < 1:
            raise ValueError("need prior_turns >= 1, prior_growth >= 0, min_programs >= 1")
        self.prior_turns = prior_turns
        self.prior_growth = prior_growth
        self.min_programs = min_programs
        self._agents: dict[str, _AgentHistory] = {}

    def observe(self, *, agent: str, turns: int, first_prompt: int, peak: int) -> None:
        """A program of ``agent`` finished after ``turns`` turns, its context from
        ``first_prompt`` to ``peak`` tokens."""
        if turns < 1:
            raise ValueError(f"turns must be >= 1, got {turns}")
        hist = self._agents.setdefault(agent, _AgentHistory())
        hist.add(turns, max(peak - first_prompt, 0) / turns)

    def seed_from_turns(self, records: Iterable[TurnRecordLike]) -> int:
        """Learn from recorded turns grouped by session (the tool registry's ``iter_turns()``);
        sessions without prompt sizes are skipped.  Returns the programs learned."""
        sessions: dict[tuple[str, str], list[TurnRecordLike]] = {}
        for rec in records:
            if rec.session_id is None or rec.prompt_tokens is None:
                continue
            sessions.setdefault((rec.agent, rec.session_id), []).append(rec)
        for (agent, _), recs in sessions.items():
            recs.sort(key=lambda r: r.step)
            first, last = recs[0], recs[-1]
            assert first.prompt_tokens is not None and last.prompt_tokens is not None
            self.observe(
                agent=agent,
                turns=last.step + 1,
                first_prompt=first.prompt_tokens,
                peak=last.prompt_tokens + last.output_tokens,
            )
        return len(sessions)

    def learned(self) -> int:
        """How many agents are predicted from their history (the rest use the prior)."""
        return sum(1 for agent in self._agents if self.known(agent))

    def known(self, agent: str) -> bool:
        hist = self._agents.get(agent)
        return hist is not None and hist.growth_n >= self.min_programs

    def predict(self, *, agent: str, step: int, context: int) -> Footprint:
        hist = self._agents.get(agent)
        if hist is None or hist.growth_n < self.min_programs:
            remaining = max(self.prior_turns - step, 1.0)
            growth = self.prior_growth
        else:
            longer = [t - step for t in hist.turns if t > step]
            remaining = sum(longer) / len(longer) if longer else 1.0
            growth = hist.growth_sum / hist.growth_n
        # The last turn adds only its output; growth·(R − 1) + one output ≈ growth·R.
        return Footprint(
            peak=context + remaining * growth, remaining_turns=remaining, growth=growth
        )


# -- tool durations and Continuum's time-to-live rule --------------------------------------------
class ToolDurations:
    """The recent durations of each tool (empirical distribution); before ``min_samples`` have
    been seen, a log-normal prior around the predicted duration (``prior_sigma``)."""

    PRIOR_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)

    def __init__(self, *, window: int = 256, min_samples: int = 8, prior_sigma: float = 1.0):
        self.window = window
        self.min_samples = min_samples
        self.prior_sigma = prior_sigma
        self._samples: dict[str, deque[float]] = {}

    def observe(self, tool: str, duration: float) -> None:
        if math.isfinite(duration) and duration >= 0:
            self._samples.setdefault(tool, deque(maxlen=self.window)).append(duration)

    def samples(self, tool: str | None, predicted: float) -> list[float]:
        """Sorted duration samples for ``tool``: observed, or the prior's quantiles."""
        seen = self._samples.get(tool) if tool is not None else None
        if seen is not None and len(seen) >= self.min_samples:
            return sorted(seen)
        median = max(predicted, 1e-3) * math.exp(-(self.prior_sigma**2) / 2)
        z = {0.5: 0.0, 0.75: 0.674, 0.9: 1.282, 0.95: 1.645, 0.99: 2.326}
        return sorted(median * math.exp(self.prior_sigma * z[q]) for q in self.PRIOR_QUANTILES)


def ttl_by_cost_benefit(
    durations: list[float], *, context_tokens: float, fallback_waste: float
) -> tuple[float, float]:
    """Continuum's cost-benefit time to live over a tool's (sorted) duration samples.

    Pinning for ``τ`` costs ``C · E[min(T, τ)]`` token·s of held memory, and if the tool outlasts
    the pin, the swap or discard it only postponed: ``(1 − F(τ)) · W_fallback``.  Candidates are
    the samples themselves (the empirical distribution's jump points); ``τ = 0`` (no pin) costs
    ``W_fallback``.  Returns ``(τ*, cost)``.
    """
    n = len(durations)
    if n == 0:
        return 0.0, fallback_waste
    best_tau, best_cost = 0.0, fallback_waste
    prefix = 0.0
    for i, tau in enumerate(durations):
        prefix += tau  # Σ of the i+1 samples ≤ τ
        returned = (i + 1) / n
        held = (prefix + tau * (n - i - 1)) / n  # E[min(T, τ)]
        cost = context_tokens * held + (1.0 - returned) * fallback_waste
        if cost < best_cost:
            best_tau, best_cost = tau, cost
    return best_tau, best_cost


# -- the admission gate ------------------------------------------------------------------------
class _ProgramGate:
    """Later turns pass when their whole context fits in the free KV (else they wait for memory,
    not for anyone's rank); new programs while the fluid footprint stays under budget and no
    later turn is waiting for memory.  The queue puts every later turn ahead of every new
    program, so the first refused new program ends the walk (``exhausted``)."""

    def __init__(self, policy: ProgramPolicy) -> None:
        self._policy = policy
        self._pending = 0.0
        self._pending_peaks = 0.0
        self._closed = False
        self._turn_waits = False
        self._given = 0  # requests this walk admitted
        # Idle: nothing running, or no program in flight but turns paused in a tool whose
        # return this engine cannot see.  An idle engine admits the head whatever its size:
        # requests queued before the rules engaged carry the later turns' class, so a new
        # program among them could otherwise hold the walk with nothing running to free memory.
        self._idle = policy.view.num_running == 0 or all(
            f.in_tool for f in policy.in_flight.values()
        )
        memory = policy.view.memory
        self._free_blocks = memory.free_gpu_blocks - max(1, memory.num_gpu_blocks // 100)
        self._used = memory.used_gpu_blocks * memory.block_size

    def allow(self, req: Request) -> bool:
        policy = self._policy
        if program_key(req) in policy.in_flight:
            return self._allow_turn(req)
        if self._turn_waits:
            self._closed = True
            return False
        patience = policy.patience
        if patience is not None and policy.view.iteration - req.enqueued_iteration >= patience:
            return True  # an operator's bound in iterations, WAIT's liveness rule (off by default)
        term = policy.footprint_term(req)
        peak = policy.predicted_peak(req)
        committed = policy.committed_resident + self._pending
        if self._idle and not self._given:
            ok = True  # an idle engine admits the head, whatever its size
        else:
            ok = committed + term <= policy.budget_tokens or (
                self._used + self._pending_peaks + peak <= policy.open_below_tokens
            )
        if ok:
            self._given += 1
            self._pending += term
            self._pending_peaks += peak
            self._free_blocks -= policy.view.memory.blocks_for(req.remaining_prefill + 1)
            return True
        self._closed = True
        policy.counters_held += 1
        return False

    def _allow_turn(self, req: Request) -> bool:
        """A chunked prefill reserves one chunk at a time: a long context recomputed into memory
        that cannot hold it preempts others chunk by chunk (and they it).  Start it only when
        all of it fits, or when nothing else runs."""
        need = self._policy.view.memory.blocks_for(req.remaining_prefill + 1)
        if need <= self._free_blocks or self._policy.view.num_running == 0:
            self._free_blocks -= need
            self._given += 1
            return True
        self._turn_waits = True
        return False

    @property
    def exhausted(self) -> bool:
        return self._closed


@dataclass(slots=True)
class _InFlight:
    agent: str
    first_prompt: int
    admitted_seq: int
    term: float
    last_seen: float
    overdue_at: float = math.inf  # in a tool: when it is forgotten if it has not come back

    @property
    def in_tool(self) -> bool:
        return self.overdue_at != math.inf


class ProgramPolicy(LampsPolicy):
    name = "program"
    gates_admission = True
    adjusts_paused = True  # pins past their time to live are swapped or discarded
    TTL_GRACE_S = 1.0

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        target_utilization: float = 0.9,
        max_age_s: float = 60.0,
        turn_max_age_s: float = 20.0,
        footprint: FootprintPredictor | None = None,
        footprint_source: str = "history",
        footprint_error: float = 0.0,
        seed: int = 0,
        stale_s: float = 1800.0,
        open_below: float = 0.5,
        patience: int | None = None,
        engage_at: float = 0.5,
        commit_at: float = 1.0,
        load_window_s: float = 120.0,
    ) -> None:
        super().__init__(
            predictor=predictor, preset=preset, starvation_threshold=None, starvation="aging"
        )
        if not 0 < target_utilization <= 4:
            raise ValueError("target_utilization must be in (0, 4]")
        if not max_age_s > 0 or not turn_max_age_s > 0 or not stale_s > 0:
            raise ValueError("max_age_s, turn_max_age_s and stale_s must be > 0")
        if footprint_source not in ("history", "oracle"):
            raise ValueError("footprint_source must be 'history' or 'oracle'")
        if not 0 <= footprint_error < 5:
            raise ValueError("footprint_error must be in [0, 5)")
        self.starvation_threshold = None  # aging bounds every wait instead
        self.target_utilization = target_utilization
        self.max_age_s = max_age_s
        self.turn_max_age_s = turn_max_age_s
        self.footprints = footprint or FootprintPredictor()
        self.footprint_source = footprint_source
        self.footprint_error = footprint_error
        self.seed = seed
        self.stale_s = stale_s
        if not 0 <= open_below <= 1:
            raise ValueError("open_below must be in [0, 1]")
        self.open_below = open_below
        if patience is not None and patience < 1:
            raise ValueError("patience must be >= 1 iterations, or None")
        self.patience = patience
        self.max_context = math.inf  # the engine's context limit (limit_context)
        if not 0 <= engage_at <= 4:
            raise ValueError("engage_at must be in [0, 4] (a fraction of the KV capacity)")
        if not load_window_s > 0:
            raise ValueError("load_window_s must be > 0")
        if not commit_at >= 0:
            raise ValueError("commit_at must be >= 0 (a multiple of the budget)")
        self.engage_at = engage_at
        self.commit_at = commit_at
        self.load_window_s = load_window_s
        self.load = 0.0  # time-averaged KV in use / KV capacity
        self.commitment = 0.0  # time-averaged committed footprint / budget
        self._load_at: float | None = None
        self.engaged = engage_at == 0.0
        self.engagements = 0  # times the program-level rules engaged
        self._turn_areas: dict[int, float] = {}  # LAMPS' area of the turn, for the open order
        self.durations = ToolDurations()
        self.in_flight: dict[Hashable, _InFlight] = {}  # by program_key
        self.committed = 0.0  # Σ footprint terms of the programs in flight
        self._in_tool = 0.0  # the part of it of programs in a tool
        self.committed_resident = 0.0  # what the gate counts (resident_commitment), per look
        self.counters_held = 0  # new programs refused by the gate (one per refusal)
        self._admissions = 0
        self._area_ref = 0.0
        self._area_n = 0
        self._ttl: dict[object, float] = {}
        self._deadlines: dict[object, float] = {}  # paused key -> when its pin's TTL runs out
        self._terms: dict[int, float] = {}  # the term computed at a request's last turn start
        self._peaks: dict[int, float] = {}  # and the predicted peak context

    # -- the budget and the footprint ------------------------------------------------------
    @property
    def budget_tokens(self) -> float:
        """``u · C``: the fluid footprints in flight may fill this much of the KV capacity (the
        engine's: the simulator's blocks, or vLLM's block pool as the plug-in mirrors it)."""
        return self.target_utilization * self._capacity_tokens

    @property
    def _capacity_tokens(self) -> int:
        memory = self.view.memory
        return memory.num_gpu_blocks * memory.block_size

    def _predict_footprint(self, req: Request) -> Footprint:
        context = req.segment.prompt_tokens
        if self.footprint_source == "oracle":  # the simulator's truth, for the sensitivity study
            segs = req.program.segments
            last = segs[-1]
            remaining = len(segs) - req.seg_index
            peak = float(last.prompt_tokens + last.output_tokens)
            fp = Footprint(
                peak=peak, remaining_turns=remaining, growth=(peak - context) / remaining
            )
        else:
            fp = self.footprints.predict(
                agent=req.program.agent, step=program_step(req), context=context
            )
        if self.footprint_error > 0:
            # One error per program, the same at every turn: e ~ N(0, error), clipped at -90 %.
            rng = random.Random(f"footprint-{self.seed}-{req.program.program_id}-{req.request_id}")
            e = max(rng.gauss(0.0, self.footprint_error), -0.9)
            grown = max(fp.peak - context, 0.0) * (1 + e)
            fp = Footprint(
                peak=context + grown, remaining_turns=fp.remaining_turns, growth=fp.growth * (1 + e)
            )
        if fp.peak > self.max_context:
            # No context outgrows the engine: a prior from larger deployments (or a history
            # learned elsewhere) must not hold the gate shut on a small engine.
            fp = Footprint(
                peak=max(self.max_context, float(context)),
                remaining_turns=fp.remaining_turns,
                growth=fp.growth,
            )
        return fp

    def footprint_term(self, req: Request) -> float:
        """``(c + P) / 2``: the program's fluid mean KV footprint for the rest of its life."""
        term = self._terms.get(req.request_id)
        if term is None:  # predicted before it was enqueued (tests, an engine's own path)
            term = self._compute_term(req, self._predict_footprint(req))
        return term

    def predicted_peak(self, req: Request) -> float:
        peak = self._peaks.get(req.request_id)
        return self._predict_footprint(req).peak if peak is None else peak

    @property
    def open_below_tokens(self) -> float:
        """Below this much KV in use (``open_below × C``) a new program is admitted whatever the
        fluid threshold says, if even its predicted peak fits: work conservation at light load."""
        return self.open_below * self._capacity_tokens

    def _compute_term(self, req: Request, fp: Footprint) -> float:
        return (req.segment.prompt_tokens + fp.peak) / 2

    def limit_context(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError(f"context limit must be >= 1 token, got {tokens}")
        self.max_context = float(tokens)

    # -- ranking ---------------------------------------------------------------------------
    def _remaining_area(self, req: Request, fp: Footprint) -> float:
        """LAMPS' memory-time area summed over the predicted remaining turns of the program."""
        pred = predicted_turn(req)
        timing = self.timing()
        strategy = req.strategy or KVStrategy.DISCARD
        context = float(req.segment.prompt_tokens)
        resident = float(req.kv_tokens)
        turns = max(1, min(math.ceil(fp.remaining_turns), 64))
        area = 0.0
        for j in range(turns):
            new = max(context - resident, 0.0)
            area += area_prefill(resident, new, timing.prefill_seconds(new))
            area += area_decode(context, pred.output_tokens, timing.tau)
            paused = context + pred.output_tokens
            if j < turns - 1 and pred.has_tool_call:
                if strategy is KVStrategy.PRESERVE:
                    area += paused * pred.tool_duration
                    resident = paused
                elif strategy is KVStrategy.SWAP:
                    area += 2 * paused * timing.transfer_seconds(paused)
                    resident = paused
                else:
                    resident = 0.0
            context += max(fp.growth, pred.output_tokens)
        return area

    def _aged_key(self, req: Request, area: float, cls: float) -> tuple[float, ...]:
        self._area_n += 1
        self._area_ref += (area - self._area_ref) / min(self._area_n, 1000)
        ref = max(self._area_ref, 1e-9)
        max_age = self.max_age_s if cls == NEW else self.turn_max_age_s
        handicap = max_age * area / (area + ref)
        return (cls, self.view.now + handicap, req.arrival_time, float(req.request_id))

    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)  # LAMPS: the turn's prediction, planned strategy and area
        self._turn_areas[req.request_id] = req.policy_rank
        fp = self._predict_footprint(req)
        term = self._compute_term(req, fp)
        self._terms[req.request_id] = term
        self._peaks[req.request_id] = fp.peak
        flight = self.in_flight.get(program_key(req))
        if flight is not None:
            if flight.in_tool:
                self._in_tool -= flight.term
            self.committed += term - flight.term
            flight.term = term
            flight.last_seen = self.view.now
            flight.overdue_at = math.inf
        elif program_step(req) > 0:  # dropped as stale (or never seen), yet a later turn came
            self._add_in_flight(req, term, first_prompt=req.program.segments[0].prompt_tokens)
        req.policy_rank = self._remaining_area(req, fp)

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        if not self.engaged:
            # LAMPS with aging (``lamps-aging``'s order, in seconds: entered + aging_s · ln A).
            area = max(self._turn_areas.get(req.request_id, req.policy_rank), 1.0)
            entered = self.view.now + self.aging_s * math.log(area)
            return (ADMITTED, entered, req.arrival_time, float(req.request_id))
        cls = ADMITTED if program_key(req) in self.in_flight else NEW
        return self._aged_key(req, req.policy_rank, cls)

    def preemption_key(self, req: Request) -> tuple[float, ...]:
        if not self.engaged:
            return req.queue_key
        flight = self.in_flight.get(program_key(req))
        seq = flight.admitted_seq if flight is not None else math.inf
        return (float(seq), float(req.request_id))

    # -- the fluid load and the engage rule ---------------------------------------------------
    def _update_load(self) -> None:
        """Time-average (exponentially, over ``load_window_s``) two signals of KV pressure: the
        KV in use over its capacity (``load``: what is held now) and the committed footprint
        over the budget (``commitment``: what the programs in flight are predicted to need,
        which leads the first when many programs start at once).  Engage the program-level
        rules when ``load`` reaches ``engage_at`` or ``commitment`` reaches ``commit_at``;
        release when both fall below ``RELEASE_FRACTION`` of theirs.  Below both the memory
        sustains the arrivals (WAIT's fluid argument: the gate only matters when the fluid load
        nears capacity), and the policy orders and keeps KV as ``lamps-aging`` does."""
        now = self.view.now
        memory = self.view.memory
        used = memory.used_gpu_blocks / max(memory.num_gpu_blocks, 1)
        committed = self.committed_resident / max(self.budget_tokens, 1.0)
        if self._load_at is None:
            self.load, self.commitment = used, committed
        elif now > self._load_at:
            weight = 1.0 - math.exp(-(now - self._load_at) / self.load_window_s)
            self.load += weight * (used - self.load)
            self.commitment += weight * (committed - self.commitment)
        self._load_at = now
        high = self.load >= self.engage_at or self.commitment >= self.commit_at
        low = (
            self.load < RELEASE_FRACTION * self.engage_at
            and self.commitment < RELEASE_FRACTION * self.commit_at
        )
        if not self.engaged and high:
            self.engaged = True
            self.engagements += 1
        elif self.engaged and low:
            self.engaged = False

    # -- admission -------------------------------------------------------------------------
    def admission_gate(self) -> AdmissionGate | None:
        self._drop_stale()
        self.committed_resident = self.resident_commitment()
        self._update_load()
        return _ProgramGate(self) if self.engaged else None

    def on_admit(self, req: Request) -> None:
        if program_key(req) not in self.in_flight:
            term = self._terms.get(req.request_id)
            if term is None:
                term = self.footprint_term(req)
            self._add_in_flight(req, term, first_prompt=req.segment.prompt_tokens)
            # Admitted now: if preempted, it returns to the queue as a later turn would.
            req.queue_key = (ADMITTED, *req.queue_key[1:])

    def resident_commitment(self) -> float:
        """The fluid footprint the gate counts: every program in flight, except those waiting
        on a tool with their KV off the GPU (swapped or discarded).  WAIT's fluid load is the
        time average of the memory held, and a program in a long tool without its KV holds
        none; counting it whole (as the first version did) held the gate shut on the INFERCEPT
        traces, whose programs spend most of their life in tools.  Its footprint counts again
        from its next turn's start, which waits for free memory ahead of every new program."""
        resident = self.committed - self._in_tool
        for paused in self.view.pinned:  # pins are few: each holds GPU memory
            flight = self.in_flight.get(paused.key)
            if flight is not None and flight.in_tool:
                resident += flight.term
        return max(resident, 0.0)

    def _add_in_flight(self, req: Request, term: float, *, first_prompt: int) -> None:
        self._admissions += 1
        self.in_flight[program_key(req)] = _InFlight(
            agent=req.program.agent,
            first_prompt=first_prompt,
            admitted_seq=self._admissions,
            term=term,
            last_seen=self.view.now,
        )
        self.committed += term

    def _drop_stale(self) -> None:
        """Forget programs that will not come back: not heard of in ``stale_s``, or still in a
        tool at twice its predicted duration plus 30 s.  In a serving engine an aborted session
        never finishes, and the vLLM plug-in makes each turn a request of its own, so the turn
        that paused never resumes; their footprints would hold the gate shut.  A program in the
        simulator that does come back is counted again from its next turn."""
        if not self.in_flight:
            return
        now = self.view.now
        horizon = now - self.stale_s
        stale = [
            key for key, f in self.in_flight.items() if f.last_seen < horizon or f.overdue_at < now
        ]
        for key in stale:
            self._leave(key)

    def _leave(self, key: Hashable) -> _InFlight | None:
        flight = self.in_flight.pop(key, None)
        if flight is not None:
            self.committed -= flight.term
            if flight.in_tool:
                self._in_tool -= flight.term
            if not self.in_flight:
                self.committed = self._in_tool = 0.0  # no drift from float sums
        return flight

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        super().on_turn_end(req, outcome)
        # Computed afresh at the next turn's start; a serving engine's turn never has one.
        self._terms.pop(req.request_id, None)
        self._peaks.pop(req.request_id, None)
        self._turn_areas.pop(req.request_id, None)
        key = program_key(req)
        if outcome.tool is not None:  # the program goes on (its pause: on_tool_call)
            self.durations.observe(outcome.tool, outcome.tool_duration)
            return
        flight = self._leave(key)
        if flight is not None:
            self.footprints.observe(
                agent=flight.agent,
                turns=program_step(req) + 1,
                first_prompt=flight.first_prompt,
                peak=req.segment.prompt_tokens + outcome.output_tokens,
            )

    def on_tool_call(self, req: Request, gap: float) -> None:
        """The program is in a tool now: forgotten if it is not back by ``2 · gap + 30`` s, and
        off the gate's count unless its KV stays pinned (:meth:`resident_commitment`)."""
        flight = self.in_flight.get(program_key(req))
        if flight is None:
            return
        flight.last_seen = self.view.now
        if not flight.in_tool:
            self._in_tool += flight.term
        flight.overdue_at = self.view.now + 2 * gap + 30.0

    # -- KV handling per call ------------------------------------------------------------------
    def _alternatives(self, paused: PausedKV, remaining: float) -> dict[KVStrategy, float]:
        """Waste of not keeping the KV: discard, and swap where the host has room."""
        memory = self.view.memory
        wastes = strategy_wastes(
            context_tokens=paused.tokens,
            tool_duration=remaining,
            preset=self.preset,
            load=self.view.load,
            swap_allowed=memory.can_swap_out(paused.blocks),
        )
        wastes.pop(KVStrategy.PRESERVE)
        return wastes

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        """Pin for Continuum's cost-benefit time to live when that beats the least waste of not
        pinning; else swap or discard, whichever wastes less."""
        if not self.engaged:
            return super().on_pause(paused)  # LAMPS: the strategy planned at the turn's start
        predicted = paused.remaining(self.view.now)
        wastes = self._alternatives(paused, predicted)
        alternative = pick_least(wastes)
        tau, cost = ttl_by_cost_benefit(
            self.durations.samples(paused.tool, predicted),
            context_tokens=paused.tokens,
            fallback_waste=wastes[alternative],
        )
        if tau > 0 and cost < wastes[alternative]:
            self._ttl[paused.key] = tau
            self._deadlines[paused.key] = self.view.now + tau
            return KVStrategy.PRESERVE
        return alternative

    def pin_ttl(self, paused: PausedKV) -> float | None:
        """The scheduler's expiry is a backstop ``TTL_GRACE_S`` after the policy's own deadline,
        at which :meth:`adjust_paused` swaps or discards the pin, whichever wastes less."""
        tau = self._ttl.pop(paused.key, None)
        return None if tau is None else tau + self.TTL_GRACE_S

    def adjust_paused(self, preserved: Sequence[PausedKV]) -> list[tuple[PausedKV, KVStrategy]]:
        now = self.view.now
        deadlines = self._deadlines
        changes: list[tuple[PausedKV, KVStrategy]] = []
        for paused in preserved:
            deadline = deadlines.get(paused.key)
            if deadline is None or now < deadline:
                continue
            del deadlines[paused.key]
            # The tool outlived its pin: the rest of its wait, predicted from now on.
            wastes = self._alternatives(paused, max(paused.remaining(now), 1.0))
            changes.append((paused, pick_least(wastes)))
        if len(deadlines) > 4 * len(preserved) + 64:  # entries of pins that left otherwise
            live = {p.key for p in preserved}
            self._deadlines = {k: v for k, v in deadlines.items() if k in live}
        return changes

    # -- reporting ---------------------------------------------------------------------------
    def state(self) -> dict[str, float]:
        """What the gate saw last: programs in flight (and how many of them are in a tool), their
        committed fluid footprint against the budget, admissions and refusals, how many agents'
        footprints are learned rather than the prior's, and the engage rule's state."""
        in_tool = sum(1 for f in self.in_flight.values() if f.in_tool)
        return {
            "in_flight": len(self.in_flight),
            "in_flight_in_tool": in_tool,
            "committed_tokens": round(self.committed, 1),
            "committed_resident_tokens": round(self.committed_resident, 1),
            "budget_tokens": round(self.budget_tokens, 1),
            "admissions": self._admissions,
            "gate_refusals": self.counters_held,
            "agents_learned": self.footprints.learned(),
            "engaged": int(self.engaged),
            "engagements": self.engagements,
            "load": round(self.load, 3),
            "commitment": round(self.commitment, 3),
        }
