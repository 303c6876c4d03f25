"""Nested WAIT (arXiv 2504.11320), output lengths unknown: admission stage by stage.

The distinct output lengths ``o(1) < … < o(K)`` are estimated online as quantiles (25/50/75/100 %)
of the output lengths observed so far (one segment until ``min_observations`` turns completed).
Segment i covers decode stages ``[o(i−1), o(i))``; a request that reaches ``o(i)`` tokens is held
(keeping its KV) until admitted into segment i+1.  With Λ_i the arrival rate of requests whose
output exceeds ``o(i−1)`` (total rate × observed fraction), ``c_i = o(i) − o(i−1)``::

    N_i = N · c_i·Λ_i / Σ_k c_k·Λ_k ;  ℓ_i = ceil(N_i / c_i)

and each iteration, for i = 1..K, up to ``min(ℓ_i, N_i − occupied_i)`` requests enter segment i —
new prompts for i = 1, held requests for i > 1 — once that many are ready (the threshold rule,
read per segment).  N is the fluid budget of :mod:`~lamps_agent.policies.fluid`.  Liveness rules
as in WAIT: if nothing would advance, the held requests of the lowest segment are released and
the gate opens; anyone held or waiting ``patience`` iterations goes on.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from lamps_agent.policies.base import AdmissionGate, Policy, TenantShares
from lamps_agent.policies.fluid import DecayedRate, Mean, resident_budget
from lamps_agent.policies.wait import _QuotaGate
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler.paused import PausedKV

_QUANTILES = (0.25, 0.5, 0.75, 1.0)


class NestedWaitPolicy(Policy):
    name = "nested-wait"
    uses_holds = True
    gates_admission = True

    def __init__(
        self,
        *,
        predictor: Predictor,
        preset: Preset,
        patience: int = 100,
        window: float = 60.0,
        min_observations: int = 20,
    ) -> None:
        super().__init__(predictor=predictor, preset=preset)
        if patience < 1 or not window > 0 or min_observations < 1:
            raise ValueError("patience and min_observations must be >= 1, window > 0")
        self.patience = patience
        self.min_observations = min_observations
        self._rate = DecayedRate(window)
        self._prompt = Mean()
        self._outputs: list[int] = []  # sorted observed output lengths
        self._output_sum = 0
        self.boundaries: list[float] = [math.inf]
        self._held_since: dict[int, int] = {}
        self._gate_quota = 0
        self._waiting = 0

    # -- estimates -----------------------------------------------------------------------
    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)
        self._rate.add(self.view.now)
        self._prompt.add(req.segment.prompt_tokens)
        req.policy_tag = 0

    def on_turn_end(self, req: Request, outcome: Outcome) -> None:
        super().on_turn_end(req, outcome)
        bisect.insort(self._outputs, outcome.output_tokens)
        self._output_sum += outcome.output_tokens
        n = len(self._outputs)
        if n >= self.min_observations and (n & (n - 1) == 0 or n % 256 == 0):
            cuts = sorted({self._outputs[min(int(q * n), n - 1)] for q in _QUANTILES})
            self.boundaries = [float(c) for c in cuts[:-1]] + [math.inf]

    def _segment_budgets(self) -> list[tuple[float, float]]:
        """(N_i, c_i) for each segment."""
        n_obs = len(self._outputs)
        mean_out = self._output_sum / n_obs if n_obs else 128.0
        total = resident_budget(self.preset.gpu_kv_tokens, self._prompt.value + mean_out / 2)
        lows = [0.0, *self.boundaries[:-1]]
        weights = []
        for low, high in zip(lows, self.boundaries, strict=True):
            width = (
                (max(self._outputs[-1], low + 1) if n_obs else 256.0) if math.isinf(high) else high
            )
            c_i = max(width - low, 1.0)
            beyond = 1.0
            if n_obs:
                beyond = (n_obs - bisect.bisect_right(self._outputs, low)) / n_obs
            weights.append((c_i * beyond, c_i))
        norm = sum(w for w, _ in weights) or 1.0
        return [(total * w / norm, c) for w, c in weights]

    # -- per iteration -------------------------------------------------------------------
    def _at_boundary(self, req: Request) -> bool:
        stage = req.policy_tag
        return (
            req.state is RequestState.DECODING
            and stage < len(self.boundaries) - 1
            and req.generated >= self.boundaries[stage]
        )

    def begin_iteration(self, resident: Sequence[Request]) -> None:
        iteration = self.view.iteration
        budgets = self._segment_budgets()
        occupied = [0] * len(budgets)
        held: list[list[Request]] = [[] for _ in budgets]
        for req in resident:
            stage = min(req.policy_tag, len(budgets) - 1)
            req.policy_tag = stage
            occupied[stage] += 1
            if self._at_boundary(req):
                self._held_since.setdefault(req.request_id, iteration)
                held[stage].append(req)
        advancing = len(resident) - sum(len(h) for h in held)
        for i in range(1, len(budgets)):
            n_i, c_i = budgets[i]
            want = min(math.ceil(n_i / c_i), math.floor(n_i) - occupied[i])
            ready = held[i - 1]
            stale = [
                r for r in ready if iteration - self._held_since[r.request_id] >= self.patience
            ]
            chosen = ready[:want] if want >= 1 and len(ready) >= want else stale
            if not chosen and advancing == 0 and ready:
                chosen = ready  # liveness: nothing else would move
            for req in chosen:
                self._release(req)
                occupied[i] += 1
                occupied[i - 1] -= 1
            advancing += len(chosen)
        n_1, c_1 = budgets[0]
        want = min(math.ceil(n_1 / c_1), math.floor(n_1) - occupied[0])
        self._gate_quota = want if want >= 1 and self._waiting >= want else 0

    def _release(self, req: Request) -> None:
        req.policy_tag += 1
        self._held_since.pop(req.request_id, None)

    def hold(self, req: Request) -> bool:
        return self._at_boundary(req)

    def admission_gate(self, *, shares: TenantShares | None = None) -> AdmissionGate | None:
        if self.view.num_running == 0:
            return None
        quota = self._gate_quota
        return _QuotaGate({0: quota}, self.patience, self.view.iteration)

    def on_enqueue(self, req: Request) -> None:
        self._waiting += 1

    def on_admit(self, req: Request) -> None:
        self._waiting -= 1

    def on_leave(self, req: Request) -> None:
        self._held_since.pop(req.request_id, None)
        req.policy_tag = 0

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.DISCARD
