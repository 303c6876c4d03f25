"""INFERCEPT (ICML 2024): FCFS by original arrival; every iteration, each paused request that still
holds its KV gets preserve, discard or swap by least waste, swaps limited by a per-iteration budget.

Waste forms are INFERCEPT's as coded (:mod:`lamps_agent.waste`).  The swap budget is what its
authors built: the tokens whose transfer hides behind one forward pass, ``compute time of the last
iteration × bandwidth / bytes per token`` — the compute time, not the step's duration (a step made
long by its own copies must not grant itself a larger budget).  Requests are visited from the most
wasteful down; each may swap only while the budget lasts, host memory has room and its remaining
(predicted) tool time covers the copy out and back in (swapping a call that returns before its KV
is back only adds the copies); within the budget a hidden copy wastes nearly nothing, so a swap
beats any positive waste.  The rest keep the cheaper of preserve and discard.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lamps_agent.policies.base import Policy, least_waste_release
from lamps_agent.request import KVStrategy
from lamps_agent.scheduler.paused import PausedKV
from lamps_agent.waste import paused_wastes


class InferceptPolicy(Policy):
    name = "infercept"
    adjusts_paused = True

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.PRESERVE  # revisited by adjust_paused before the next iteration runs

    def swap_budget_tokens(self) -> float:
        """Tokens whose copy hides behind the last iteration's compute."""
        preset = self.preset
        nbytes = preset.cost.copy_budget_bytes(self.view.last_compute_time)
        return nbytes / preset.kv_bytes_per_token

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
        remaining = returns - view.now
        w_preserve, w_discard = paused_wastes(
            contexts, remaining, view.load, preset.cost, preset.token_budget
        )
        best = np.minimum(w_preserve, w_discard)
        cost = preset.cost
        round_trip = 2.0 * (
            cost.swap_latency_ms / 1000.0
            + contexts * preset.kv_bytes_per_token / cost.swap_bytes_per_s
        )
        may_swap = (best > 0) & (remaining >= round_trip)
        budget = self.swap_budget_tokens()
        host_free = view.memory.free_host_blocks
        decisions: list[tuple[PausedKV, KVStrategy]] = []
        for i in np.argsort(-best, kind="stable"):
            paused = preserved[int(i)]
            tokens = paused.tokens
            blocks = paused.blocks
            # Within the budget the copy hides behind compute, so swapping wastes ~nothing.
            if may_swap[i] and tokens <= budget and blocks <= host_free:
                decisions.append((paused, KVStrategy.SWAP))
                budget -= tokens
                host_free -= blocks
                continue
            if w_discard[i] < w_preserve[i]:
                decisions.append((paused, KVStrategy.DISCARD))
        return decisions

    def release_strategy(self, paused: PausedKV) -> KVStrategy:
        """A pin released under pressure: swap it if that wastes less than recomputing it."""
        return least_waste_release(self, paused)
