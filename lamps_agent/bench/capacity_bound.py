"""The capacity bound: the arrival rate (programs/s) no scheduler can sustain beyond, on an engine.

Two physical limits, each computed per program as if it ran alone (alone, every step is at
batch size one, the fastest a step can be, so no schedule holds KV for less time or computes in
less):

* **KV.**  By Little's law the mean KV in use is ``λ · E[A]``, with ``A`` a program's
  time-integral of resident KV tokens (token·s); it cannot exceed the KV capacity ``C``, so
  ``λ ≤ C / E[A]``.  ``A`` is computed two ways: with the KV *kept* through each tool call
  (the context × the tool's duration added, the next turn prefills only the tool's return), and
  with it *dropped* at each tool call (nothing held during the tool, the whole context
  recomputed at the next turn).
* **Compute.**  A program's tokens cost the cost model's marginal rates wherever they run, plus
  what no batch shares (``R``: each decode step reading the program's own context,
  ``kv_ms_per_token``, and each prefill attending to the context before it); the fixed
  per-step cost ``base`` is paid once per step, and the engine needs at least as many steps as
  the fullest batches it may run: ``token_budget`` query tokens a step, ``max_num_seqs``
  decodes a step, and **no more resident KV in a step than the KV capacity** (a request in a
  step holds its whole context on the GPU).  Per program, with ``P`` the prefill tokens it
  needs at least (its first prompt and the tools' returns: the KV kept), ``O`` its output
  tokens and ``K`` the token·steps of KV it holds in its own steps (its context in each decode
  step, in each prefill chunk the context so far)::

      λ ≤ 1 / (E[P·a + O·d + R] + base · max(E[P + O] / B, E[O] / S, E[K] / C))

  The means are taken before the maximum: the three step counts are totals over the whole
  run, and one program's prefill may share a step with another's decodes.  Without the KV
  term a full batch of ``max_num_seqs`` decodes shares the step cost, which a KV of tens of
  contexts cannot hold (multi-API on ``a100-gptj6b``: 6.99 programs/s with it left out, 5.61
  with it).

The bound is ``min(max(KV kept, KV dropped), compute)``: the better of the two ways of holding a
paused turn's KV, and never more than the compute allows.  (A schedule that mixes the two per
call, or swaps to a host tier, could hold less KV than either; the kept/dropped pair brackets
what the policies here do.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lamps_agent.cost_model import CostModel
from lamps_agent.presets import Preset
from lamps_agent.program import Program


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityBound:
    """Programs/s each limit allows, for one workload on one preset."""

    kv_kept: float
    kv_dropped: float
    compute: float

    @property
    def kv(self) -> float:
        return max(self.kv_kept, self.kv_dropped)

    @property
    def bound(self) -> float:
        return min(self.kv, self.compute)

    @property
    def limit(self) -> str:
        """Which limit binds: ``"kv"`` or ``"compute"``."""
        return "kv" if self.kv <= self.compute else "compute"


def _sum_squares(first: int, count: int) -> float:
    """Σ x² for x = first … first + count − 1."""

    def upto(n: int) -> float:  # Σ_{x=0}^{n-1} x²
        return (n - 1) * n * (2 * n - 1) / 6 if n > 0 else 0.0

    return upto(first + count) - upto(first)


def _decode_area(cost: CostModel, resident: int, steps: int) -> float:
    """token·s of ``steps`` decode steps alone, starting with ``resident`` tokens of KV (a step
    with ``x`` tokens holds them for ``base + decode + kv·x`` ms and adds one)."""
    if steps <= 0:
        return 0.0
    fixed = cost.base_ms + cost.decode_ms_per_seq
    tokens = steps * resident + steps * (steps - 1) / 2  # Σ x
    squares = _sum_squares(resident, steps)  # Σ x²
    return (fixed * tokens + cost.kv_ms_per_token * squares) / 1000.0


def _prefill_area(cost: CostModel, budget: int, resident: int, target: int) -> float:
    """token·s of prefilling from ``resident`` to ``target`` tokens alone, chunk by chunk (a
    chunk's blocks are held for its whole step)."""
    area = 0.0
    while resident < target:
        chunk = min(budget, target - resident)
        step = cost.iteration_time(chunk, 0, resident, chunk * (resident + chunk / 2.0), 1)
        resident += chunk
        area += resident * step
    return area


def kv_time_integral(program: Program, preset: Preset, *, keep: bool) -> float:
    """token·s of KV the program holds when it runs alone, its KV kept through each tool call
    (``keep``) or dropped at each and recomputed at the next turn."""
    cost, budget = preset.cost, preset.token_budget
    area = 0.0
    resident = 0
    for seg in program.segments:
        area += _prefill_area(cost, budget, resident, seg.prompt_tokens)
        # The prefill's last step emits the first token; the rest are decode steps.
        area += _decode_area(cost, seg.prompt_tokens + 1, seg.output_tokens - 1)
        context = seg.prompt_tokens + seg.output_tokens
        if seg.has_tool_call and keep:
            area += context * seg.tool_duration
            resident = context
        else:
            resident = 0
    return area


@dataclass(frozen=True, slots=True)
class Work:
    """What a program's run alone asks of the engine's compute (the module doc's terms)."""

    own_ms: float  # marginal token costs and what no batch shares
    query_tokens: int  # P + O: the step's token budget counts both
    decode_tokens: int  # O: the step's seats count decodes
    kv_token_steps: float  # K: resident KV summed over the program's own steps


def _prefill_token_steps(budget: int, resident: int, target: int) -> float:
    """Σ resident KV over the fewest prefill steps from ``resident`` to ``target`` tokens, the
    smallest such sum: the partial chunk first (each step holds its context so far)."""
    new = target - resident
    if new <= 0:
        return 0.0
    chunks = math.ceil(new / budget)
    first = resident + new - (chunks - 1) * budget  # what the first step holds
    return chunks * first + budget * chunks * (chunks - 1) / 2


def program_work(program: Program, preset: Preset) -> Work:
    """The program's compute with the KV kept, so that nothing is computed twice."""
    cost, budget = preset.cost, preset.token_budget
    prefill = decode = 0
    own_ms = token_steps = 0.0
    resident = 0
    for seg in program.segments:
        new = seg.prompt_tokens - resident
        prefill += new
        decode += seg.output_tokens
        own_ms += cost.prefill_attn_ms_per_mtok2 * new * (resident + new / 2.0) * 1e-6
        own_ms += cost.prefill_request_ms * math.ceil(new / budget)  # its chunks
        token_steps += _prefill_token_steps(budget, resident, seg.prompt_tokens)
        steps = seg.output_tokens - 1  # the prefill's last step emits the first token
        reads = steps * (seg.prompt_tokens + 1) + steps * (steps - 1) / 2
        own_ms += cost.kv_ms_per_token * reads
        token_steps += reads
        resident = seg.prompt_tokens + seg.output_tokens
    own_ms += prefill * cost.prefill_ms_per_token + decode * cost.decode_ms_per_seq
    return Work(
        own_ms=own_ms,
        query_tokens=prefill + decode,
        decode_tokens=decode,
        kv_token_steps=token_steps,
    )


def compute_seconds(programs: Sequence[Program], preset: Preset) -> float:
    """The least engine time per program, on average, that ``programs`` take in the fullest
    batches the engine allows (the module doc's compute limit)."""
    works = [program_work(p, preset) for p in programs]
    steps = max(
        statistics.fmean(w.query_tokens for w in works) / preset.token_budget,
        statistics.fmean(w.decode_tokens for w in works) / preset.max_num_seqs,
        statistics.fmean(w.kv_token_steps for w in works) / preset.gpu_kv_tokens,
    )
    own_ms = statistics.fmean(w.own_ms for w in works)
    return (own_ms + preset.cost.base_ms * steps) / 1000.0


def capacity_bound(programs: Sequence[Program], preset: Preset) -> CapacityBound:
    """The bound for arrivals drawn uniformly from ``programs`` (as the bench samples them)."""
    if not programs:
        raise ValueError("the capacity bound needs at least one program")
    capacity = preset.gpu_kv_tokens
    kept = statistics.fmean(kv_time_integral(p, preset, keep=True) for p in programs)
    dropped = statistics.fmean(kv_time_integral(p, preset, keep=False) for p in programs)
    seconds = compute_seconds(programs, preset)
    return CapacityBound(
        kv_kept=capacity / kept if kept > 0 else math.inf,
        kv_dropped=capacity / dropped if dropped > 0 else math.inf,
        compute=1.0 / seconds if seconds > 0 else math.inf,
    )
