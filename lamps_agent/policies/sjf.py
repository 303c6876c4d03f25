"""Shortest predicted job first: the waiting queue ordered by the predicted output of the turn.

A tool-unaware length-aware baseline (as in prior SJF work for LLM serving): tool calls discard the
KV like stock vLLM, the continuation re-enters the queue by its own predicted output.  No
starvation bound.
"""

from __future__ import annotations

from lamps_agent.policies.base import Policy, predicted_turn
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV


class SjfPolicy(Policy):
    name = "sjf"

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        return (predicted_turn(req).output_tokens, req.arrival_time, float(req.request_id))

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.DISCARD
