"""WAIT (arXiv 2504.11320), output lengths known: threshold admission guided by the fluid model.

Request types: the agent of the program × the predicted output length of the turn in powers of two
(WAIT assumes discrete types with known lengths; the predictor supplies the length).  Per type the
policy estimates online the arrival rate λ_j (decayed count, :mod:`~lamps_agent.policies.fluid`),
the mean prompt l_j and output o_j.  Each iteration::

    N   = KV capacity / Σ_j share_j·(l_j + o_j/2)       share_j = λ_j(o_j+1) / Σ_k λ_k(o_k+1)
    N_j = N · share_j ;  n_j = max(1, floor(N_j / (o_j+1)))
    admit min(n_j, N_j − resident_j) of type j, but only once that many are waiting

(the paper's practical variant).  So every request finishes, two liveness rules are added: an idle
engine admits whatever waits, and a request that waited ``patience`` iterations is admitted
regardless.  Tool calls discard the KV, as WAIT knows nothing of tools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lamps_agent.policies.base import AdmissionGate, Policy, TenantShares, predicted_turn
from lamps_agent.policies.fluid import DecayedRate, Mean, resident_budget
from lamps_agent.predictors.base import Predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV


@dataclass(slots=True)
class TypeStats:
    rate: DecayedRate
    prompt: Mean = field(default_factory=Mean)
    output: Mean = field(default_factory=Mean)
    waiting: int = 0
    resident: int = 0


class _QuotaGate:
    # Looking deeper than this for a type with quota left costs more than it is worth: the
    # requests left behind are reached by a later iteration or by the patience rule.
    MAX_REJECTIONS = 256

    def __init__(self, quotas: dict[int, int], patience: int, iteration: int) -> None:
        self._quotas = quotas
        self._patience = patience
        self._iteration = iteration
        self._rejections = 0

    def allow(self, req: Request) -> bool:
        if self._iteration - req.enqueued_iteration >= self._patience:
            return True
        left = self._quotas.get(req.policy_tag, 0)
        if left > 0:
            self._quotas[req.policy_tag] = left - 1
            return True
        self._rejections += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self._rejections >= self.MAX_REJECTIONS or not any(self._quotas.values())

    closes_tenant = False  # quotas are per request type, not per tenant


class WaitPolicy(Policy):
    name = "wait"
    gates_admission = True

    def __init__(
        self, *, predictor: Predictor, preset: Preset, patience: int = 100, window: float = 60.0
    ) -> None:
        super().__init__(predictor=predictor, preset=preset)
        if patience < 1 or not window > 0:
            raise ValueError("patience must be >= 1 and window > 0")
        self.patience = patience
        self.window = window
        self._types: dict[tuple[str, int], int] = {}
        self._stats: list[TypeStats] = []

    def _type_of(self, req: Request) -> int:
        out = predicted_turn(req).output_tokens
        key = (req.program.agent, int(math.log2(max(out, 1.0))))
        index = self._types.get(key)
        if index is None:
            index = self._types[key] = len(self._stats)
            self._stats.append(TypeStats(rate=DecayedRate(self.window)))
        return index

    def on_turn_start(self, req: Request) -> None:
        super().on_turn_start(req)
        req.policy_tag = self._type_of(req)
        stats = self._stats[req.policy_tag]
        stats.rate.add(self.view.now)
        stats.prompt.add(req.segment.prompt_tokens)
        stats.output.add(predicted_turn(req).output_tokens)

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.DISCARD

    def on_enqueue(self, req: Request) -> None:
        self._stats[req.policy_tag].waiting += 1

    def on_admit(self, req: Request) -> None:
        stats = self._stats[req.policy_tag]
        stats.waiting -= 1
        stats.resident += 1

    def on_leave(self, req: Request) -> None:
        self._stats[req.policy_tag].resident -= 1

    def quotas(self) -> dict[int, int]:
        """How many of each type may be admitted now (empty: nothing known yet)."""
        now = self.view.now
        weights = {j: s.rate.rate(now) * (s.output.value + 1) for j, s in enumerate(self._stats)}
        total = sum(weights.values())
        if total <= 0:
            return {}
        footprint = sum(
            w / total * (s.prompt.value + s.output.value / 2)
            for w, s in zip(weights.values(), self._stats, strict=True)
        )
        n_total = resident_budget(self.preset.gpu_kv_tokens, footprint)
        quotas: dict[int, int] = {}
        for j, s in enumerate(self._stats):
            n_j = n_total * weights[j] / total
            batch = max(1, math.floor(n_j / (s.output.value + 1)))
            need = min(batch, math.floor(n_j) - s.resident)
            quotas[j] = need if need >= 1 and s.waiting >= need else 0
        return quotas

    def admission_gate(self, *, shares: TenantShares | None = None) -> AdmissionGate | None:
        if self.view.num_running == 0:
            return None  # an idle engine gains nothing by waiting
        return _QuotaGate(self.quotas(), self.patience, self.view.iteration)
