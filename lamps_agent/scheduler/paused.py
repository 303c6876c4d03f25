"""Paused turns: the KV of agents waiting on a tool, as every policy and both engines see it.

A :class:`PausedKV` is engine-neutral: how many tokens and blocks the paused context holds, when
the tool started, when it is predicted to return, and how the KV is held now.  The simulator keys
entries by request id, the vLLM plug-in by session id; the policy never needs to know which.

The :class:`PausedTable` keeps the entries whose KV is still on the GPU (preserved, or *pinned* in
vLLM's words) with their time to live, and answers the two questions both engines ask: which pins
have expired, and which pin to release first under memory pressure (the policy's
:meth:`~lamps_agent.policies.base.Policy.pin_release_key`, largest first).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from lamps_agent.request import KVStrategy, Request

# A paused turn whose gap nobody can predict (the predictor said "final answer", yet the session
# may continue): assume the registry's default for an unknown tool.
UNKNOWN_GAP_S = 5.0


@dataclass(slots=True, eq=False, kw_only=True)
class PausedKV:
    """One paused turn's KV cache."""

    key: Hashable  # request id (simulator) or session id (vLLM)
    tokens: int  # tokens whose KV exists for the context
    blocks: int  # GPU blocks it holds while preserved
    paused_at: float
    predicted_return: float
    planned: KVStrategy | None = None  # chosen when the turn started (LAMPS), if any
    tool: str | None = None
    strategy: KVStrategy = KVStrategy.PRESERVE  # how the KV is held now
    expires_at: float = float("inf")
    request: Request | None = None  # the engine-neutral request behind it, where there is one
    returned: bool = False  # its tool returned; it waits for admission with its KV pinned

    def remaining(self, now: float) -> float:
        """Predicted seconds until the tool returns (0 once overdue)."""
        return max(self.predicted_return - now, 0.0)


class PausedTable:
    """The preserved entries (KV on the GPU), with an expiry heap for their time to live."""

    def __init__(self) -> None:
        self._preserved: dict[Hashable, PausedKV] = {}
        self._expiry: list[tuple[float, int, Hashable]] = []  # stale entries skipped on pop
        self._seq = itertools.count()
        self.preserved_tokens = 0

    def __len__(self) -> int:
        return len(self._preserved)

    def __bool__(self) -> bool:
        return bool(self._preserved)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._preserved

    def __iter__(self) -> Iterator[PausedKV]:
        return iter(self._preserved.values())

    def get(self, key: Hashable) -> PausedKV | None:
        return self._preserved.get(key)

    def values(self) -> list[PausedKV]:
        return list(self._preserved.values())

    def add(self, paused: PausedKV) -> None:
        if paused.key in self._preserved:
            raise ValueError(f"paused turn {paused.key!r} is already preserved")
        paused.strategy = KVStrategy.PRESERVE
        self._preserved[paused.key] = paused
        self.preserved_tokens += paused.tokens
        if paused.expires_at != float("inf"):
            heapq.heappush(self._expiry, (paused.expires_at, next(self._seq), paused.key))

    def pop(self, key: Hashable) -> PausedKV | None:
        paused = self._preserved.pop(key, None)
        if paused is not None:
            self.preserved_tokens -= paused.tokens
        return paused

    def expired(self, now: float) -> list[PausedKV]:
        """Entries whose time to live ran out, removed from the table."""
        out: list[PausedKV] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            paused = self._preserved.get(key)
            if paused is not None and paused.expires_at <= now:
                self.pop(key)
                out.append(paused)
        if len(heap) > 2 * len(self._preserved) + 64:  # popped entries leave stale heap items
            self._expiry = [
                (p.expires_at, next(self._seq), p.key)
                for p in self._preserved.values()
                if p.expires_at != float("inf")
            ]
            heapq.heapify(self._expiry)
        return out

    def worst(
        self, key: Callable[[PausedKV], tuple[float, ...]], *, exclude: Hashable | None = None
    ) -> PausedKV | None:
        """The entry to release first under pressure: the largest key."""
        best: PausedKV | None = None
        best_key: tuple[float, ...] = ()
        for paused in self._preserved.values():
            if paused.key == exclude and exclude is not None:
                continue
            k = key(paused)
            if best is None or k > best_key:
                best, best_key = paused, k
        return best
