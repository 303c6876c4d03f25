"""INFERCEPT (ICML 2024): FCFS by original arrival; every iteration, each paused request that still
holds its KV gets preserve, discard or swap by least waste, swaps limited by a per-iteration budget.

Waste forms are INFERCEPT's as coded (:mod:`lamps_agent.waste`).  The swap budget is the number of
tokens whose transfer hides behind one forward pass: ``last iteration time × bandwidth / bytes per
token``.  Requests are visited from the most wasteful down; each may swap only while the budget
lasts and host memory has room (a hidden copy wastes nearly nothing, so within the budget a swap
beats any positive waste); the rest keep the cheaper of preserve and discard.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lamps_agent.policies.base import Policy
from lamps_agent.request import KVStrategy
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.waste import paused_wastes


class InferceptPolicy(Policy):
    name = "infercept"
    adjusts_paused = True

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.PRESERVE  # revisited by adjust_paused before the next iteration runs

    def adjust_paused(self, preserved: Sequence[PausedKV]) -> list[tuple[PausedKV, KVStrategy]]:
        if not preserved:
            return []
        view = self.view
        preset = self.preset
        contexts = np.fromiter(
            (p.tokens for p in preserved), dtype=np.float64, count=len(preserved)
        )
        returns = np.fromiter(
            (p.predicted_return for p in preserved), dtype=np.float64, count=len(preserved)
        )
        w_preserve, w_discard = paused_wastes(
            contexts, returns - view.now, view.load, preset.cost, preset.saturation_tokens
        )
        best = np.minimum(w_preserve, w_discard)
        budget = view.last_iteration_time * preset.cost.swap_bytes_per_s / preset.kv_bytes_per_token
        host_free = view.memory.free_host_blocks
        decisions: list[tuple[PausedKV, KVStrategy]] = []
        for i in np.argsort(-best, kind="stable"):
            paused = preserved[int(i)]
            tokens = paused.tokens
            blocks = paused.blocks
            # Within the budget the copy hides behind compute, so swapping wastes ~nothing.
            if tokens <= budget and blocks <= host_free and best[i] > 0:
                decisions.append((paused, KVStrategy.SWAP))
                budget -= tokens
                host_free -= blocks
                continue
            if w_discard[i] < w_preserve[i]:
                decisions.append((paused, KVStrategy.DISCARD))
        return decisions
