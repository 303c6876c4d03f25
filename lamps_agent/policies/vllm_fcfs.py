"""Stock vLLM: first come, first served; a tool call ends the request and frees its KV.

The continuation after the tool is a new request to vLLM, so it joins the back of the queue.
``vllm`` is vLLM as users run it (automatic prefix caching on): the freed full blocks stay in the
LRU free pool and the continuation reuses whatever was not evicted, recomputing the rest.
``vllm-nocache`` is the baseline the INFERCEPT and LAMPS papers compare against: no prefix cache,
the whole context recomputed.  Preemption frees and recomputes (vLLM V1 has no swap preemption).
"""

from __future__ import annotations

from lamps_agent.policies.base import Policy
from lamps_agent.request import KVStrategy, Request
from lamps_agent.scheduler.paused import PausedKV


class VllmPolicy(Policy):
    """Stock vLLM as users run it: first come, first served, a tool call frees the KV, the next
    turn reuses what the prefix cache kept."""

    name = "vllm"

    def queue_key(self, req: Request, *, resumed: bool) -> tuple[float, ...]:
        # vLLM's FCFS queue is in the order requests were added: turns that became schedulable
        # at the same step keep the order they came in (not their program's)
        entered = self.view.now if resumed else req.arrival_time
        return (entered, float(req.arrival_seq))

    def preemption_key(self, req: Request) -> tuple[float, ...]:
        """vLLM's running list is in admission order and its victim is the last admitted."""
        return (float(req.admitted_seq),)

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.DISCARD


class VllmNoCachePolicy(VllmPolicy):
    """Stock vLLM without a prefix cache, the INFERCEPT and LAMPS papers' baseline: every turn
    recomputes its whole context."""

    name = "vllm-nocache"
    prefix_caching = False
