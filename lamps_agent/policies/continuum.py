"""``continuum``: Continuum / CacheTTL (arXiv 2511.02230; code: Hanchenli/vllm-continuum).

A turn that ends in a tool call keeps its KV pinned on the GPU for a time to live chosen from the
tool's duration distribution; the pin is dropped (discarded: its blocks stay in the prefix cache
until evicted) when the TTL runs out before the tool returns.  Requests are served first come,
first served at the level of programs.  Each rule, with its source (docs/scheduling.md,
"`continuum`"):

* **TTL** (paper §4.2, Eq. 2): ``τ* = argmax_τ P(τ, f)·(T·η + PrefillReload(r)) − τ`` over
  ``τ ∈ {0} ∪ S[f]``, with ``P`` the empirical CDF of tool ``f``'s observed durations ``S[f]``
  (each the time from a turn's end to its program's next turn, §5.1),
  ``T`` the sliding-window mean queueing delay of turns that came back without their KV, ``η =
  −Corr(k, N − k)`` the workload's memoryfulness over the served turns of finished programs, and
  ``PrefillReload`` the time to prefill the context again.  ``τ* = 0``: no pin.
* **Cold start** (§4.2): with at most ``K`` = 100 durations in all, the fixed ``T_default``; with
  at most ``K`` for this tool, the global distribution.  ``T_default`` is the public code's
  ``FIXED_THRESHOLD_CONTINUUM`` = 2 s, given to every tool whose mean observed duration is at
  most 2 s (none for longer ones), as its ``set_up_pin`` does.
* **Order** (§4.3; code: ``ContinuumRequestQueue.peek_request``): turns whose program's KV is
  pinned first, then by the program's first arrival.
* **Expiry** (§5.2): a pin whose TTL ran out is freed unless the program's next turn is already
  waiting (the core keeps a returned turn's pin until it is admitted).
* **Deadlock prevention** (§5.2): when the head of the queue does not fit, pins are released from
  the latest program arrival first.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from lamps_agent.policies.base import Policy
from lamps_agent.policies.program import program_key, program_step
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler.paused import PausedKV

DEFAULT_TTL_S = 2.0  # FIXED_THRESHOLD_CONTINUUM, vllm/v1/core/estimate_with_func.py
COLD_START_K = 100  # K, paper §4.2
DELAY_WINDOW = 100  # turns in T's sliding window (the paper gives no size)
PINNED, UNPINNED = 0.0, 1.0  # the key's class


def ttl_by_expected_benefit(durations: list[float], benefit_s: float) -> float:
    """Continuum's Eq. 2 over sorted duration samples: the ``τ`` in ``{0} ∪ durations`` that
    maximises ``P(τ)·benefit − τ`` (``P`` the empirical CDF; ties: the shortest)."""
    best_tau, best = 0.0, 0.0
    n = len(durations)
    for i, tau in enumerate(durations):
        if i + 1 < n and durations[i + 1] == tau:
            continue  # P jumps at the last of equal samples
        value = (i + 1) / n * benefit_s - tau
        if value > best:
            best_tau, best = tau, value
    return best_tau


class ToolCallHistory:
    """``S``: every observed duration, per tool (sorted), with the cold-start rule of §4.2."""

    def __init__(self, *, k: int = COLD_START_K, default_ttl_s: float = DEFAULT_TTL_S) -> None:
        if k < 0 or not default_ttl_s >= 0:
            raise ValueError("need k >= 0 and default_ttl_s >= 0")
        self.k = k
        self.default_ttl_s = default_ttl_s
        self._by_tool: dict[str, list[float]] = {}
        self._all: list[float] = []

    def observe(self, tool: str, duration: float) -> None:
        if math.isfinite(duration) and duration >= 0:
            bisect.insort(self._by_tool.setdefault(tool, []), duration)
            bisect.insort(self._all, duration)

    def __len__(self) -> int:
        return len(self._all)

    def ttl(self, tool: str | None, benefit_s: float) -> float:
        own = self._by_tool.get(tool, []) if tool is not None else []
        if len(self._all) <= self.k:  # cold: the public code's fixed TTL
            mean = sum(own) / len(own) if own else 0.0
            return 0.0 if mean > self.default_ttl_s else self.default_ttl_s
        samples = own if len(own) > self.k else self._all
        return ttl_by_expected_benefit(samples, benefit_s)


class Memoryfulness:
    """``η = −Corr(k, N − k)`` over every served turn ``k`` of the finished programs (``N`` turns
    each); 1 (fully memoryful, the paper's cold-start assumption) until it is defined."""

    def __init__(self) -> None:
        self._n = 0
        self._sx = self._sy = self._sxx = self._syy = self._sxy = 0.0

    def observe(self, turns: int) -> None:
        for k in range(turns):
            x, y = float(k), float(turns - k)
            self._n += 1
            self._sx += x
            self._sy += y
            self._sxx += x * x
            self._syy += y * y
            self._sxy += x * y

    @property
    def eta(self) -> float:
        n = self._n
        if n < 2:
            return 1.0
        vx = self._sxx - self._sx**2 / n
        vy = self._syy - self._sy**2 / n
        if vx <= 1e-9 or vy <= 1e-9:
            return 1.0
        return -(self._sxy - self._sx * self._sy / n) / math.sqrt(vx * vy)


@dataclass(slots=True)
class _Program:
    arrival: float  # the program's first arrival: its place in the order


class ContinuumPolicy(Policy):
    name = "continuum"

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        cold_start_k: int = COLD_START_K,
        default_ttl_s: float = DEFAULT_TTL_S,
        delay_window: int = DELAY_WINDOW,
    ) -> None:
        super().__init__(predictor=predictor, preset=preset)
        if delay_window < 1:
            raise ValueError(f"delay_window must be >= 1, got {delay_window}")
        self.history = ToolCallHistory(k=cold_start_k, default_ttl_s=default_ttl_s)
        self.memoryfulness = Memoryfulness()
        self._delays: deque[float] = deque(maxlen=delay_window)
        self._programs: dict[Hashable, _Program] = {}
        self._evicted: set[int] = set()  # waiting turns that came back without their KV
        self._ttl: dict[Hashable, float] = {}  # paused key -> τ*, until the core asks
        self._in_tool: dict[Hashable, tuple[str, float]] = {}  # program -> (tool, since)

    # -- T and the benefit -----------------------------------------------------------------
    @property
    def queue_delay(self) -> float:
        """``T``: the mean queueing delay of the last turns that came back without their KV
        (0 before any, as the paper initialises it)."""
        return sum(self._delays) / len(self._delays) if self._delays else 0.0

    def benefit(self, paused: PausedKV) -> float:
        """Seconds a pin saves when the tool returns within it: ``T·η + PrefillReload``."""
        reload = self.preset.cost.prefill_time(paused.tokens, self.preset.token_budget)
        return self.queue_delay * self.memoryfulness.eta + reload

    # -- programs and order ----------------------------------------------------------------
    def _program(self, req: Request) -> _Program:
        key = program_key(req)
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = _Program(arrival=req.arrival_time)
        return prog

    def _pinned(self, req: Request) -> bool:
        if req.state is RequestState.PAUSED_PRESERVED:
            return True
        key = program_key(req)
        return any(p.key == key for p in self.view.pinned)  # a session's pin (vLLM)

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        pinned = resumed and self._pinned(req)
        if resumed and not pinned:
            self._evicted.add(req.request_id)
        cls = PINNED if pinned else UNPINNED
        return (cls, self._program(req).arrival, float(req.request_id))

    def on_admit(self, req: Request) -> None:
        if req.request_id in self._evicted:
            self._evicted.discard(req.request_id)
            self._delays.append(self.view.now - req.enqueued_at)

    # -- the pin and its time to live --------------------------------------------------------
    def on_pause(self, paused: PausedKV) -> KVStrategy:
        if paused.tool is not None:  # timed until the program's next turn arrives
            self._in_tool[paused.key] = (paused.tool, self.view.now)
        tau = self.history.ttl(paused.tool, self.benefit(paused))
        if tau <= 0:
            return KVStrategy.DISCARD
        self._ttl[paused.key] = tau
        return KVStrategy.PRESERVE

    def pin_ttl(self, paused: PausedKV) -> float | None:
        return self._ttl.pop(paused.key, None)

    def pin_release_key(self, paused: PausedKV) -> float:
        """The latest program arrival is released first."""
        req = paused.request
        if req is None:
            return paused.paused_at
        prog = self._programs.get(program_key(req))
        return prog.arrival if prog is not None else req.arrival_time

    # -- observations ------------------------------------------------------------------------
    def on_turn_start(self, req: Request) -> None:
        """A turn arrived; if its program was in a tool, the tool's duration is the time since
        the previous turn ended (the paper's inter-request interval: an engine sees no more)."""
        super().on_turn_start(req)
        self._program(req)
        called = self._in_tool.pop(program_key(req), None)
        if called is not None:
            tool, since = called
            self.history.observe(tool, self.view.now - since)

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        super().on_turn_end(req, outcome)
        if outcome.tool is None:
            self.memoryfulness.observe(program_step(req) + 1)
            self._programs.pop(program_key(req), None)

    def state(self) -> dict[str, float]:
        return {
            "programs": len(self._programs),
            "queue_delay_s": round(self.queue_delay, 4),
            "eta": round(self.memoryfulness.eta, 4),
            "tool_samples": len(self.history),
        }
