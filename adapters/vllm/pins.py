"""Preserved KV: a session's blocks pinned in vLLM's block pool while its agent runs a tool.

A pin is one reference taken on each full (hashed) block of a finished turn
(``BlockPool.touch``); while it is held the blocks cannot be evicted, so the session's next turn
finds its whole prefix in the prefix cache.  A pin is released (``BlockPool.free_blocks``) when
the session's next turn has been admitted (it then holds its own references), when its time to
live runs out, when memory is short (the pin whose keeping wastes most goes first: predicted
remaining tool time × blocks), or when the session is aborted.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Pin:
    session_id: str
    blocks: list[Any]  # vLLM KVCacheBlock
    tokens: int
    pinned_at: float
    predicted_return: float
    expires_at: float


@dataclass(slots=True)
class PinCounters:
    pinned: int = 0
    released: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.released[reason] = self.released.get(reason, 0) + 1


class PinTable:
    def __init__(
        self, *, touch: Callable[[Sequence[Any]], None], free: Callable[[Sequence[Any]], None]
    ) -> None:
        self._touch = touch
        self._free = free
        self.pins: dict[str, Pin] = {}
        self.counters = PinCounters()
        self._expiry: list[tuple[float, int, str]] = []  # heap; stale entries skipped on pop
        self._seq = 0

    @property
    def pinned_blocks(self) -> int:
        return sum(len(p.blocks) for p in self.pins.values())

    def pin(
        self,
        session_id: str,
        blocks: Sequence[Any],
        *,
        tokens: int,
        tool_duration: float,
        ttl: float,
    ) -> None:
        hashed = [
            b
            for b in blocks
            if getattr(b, "block_hash", None) is not None and not getattr(b, "is_null", False)
        ]
        self.release(session_id, "replaced")  # a session holds at most one pin
        if not hashed:
            return
        self._touch(hashed)
        now = time.time()
        self.pins[session_id] = Pin(
            session_id=session_id,
            blocks=hashed,
            tokens=tokens,
            pinned_at=now,
            predicted_return=now + tool_duration,
            expires_at=now + ttl,
        )
        self._seq += 1
        heapq.heappush(self._expiry, (now + ttl, self._seq, session_id))
        self.counters.pinned += 1

    def release(self, session_id: str | None, reason: str) -> int:
        pin = self.pins.pop(session_id, None) if session_id else None
        if pin is None:
            return 0
        self._free(pin.blocks[::-1])  # tail first: the prefix stays cached longest
        self.counters.count(reason)
        return len(pin.blocks)

    def expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, sid = heapq.heappop(heap)
            pin = self.pins.get(sid)
            if pin is not None and pin.expires_at <= now:
                self.release(sid, "ttl")
        if len(heap) > 2 * len(self.pins) + 64:  # released pins leave stale entries behind
            self._expiry = [
                (p.expires_at, i, p.session_id) for i, p in enumerate(self.pins.values())
            ]
            heapq.heapify(self._expiry)

    def waste(self, pin: Pin, now: float) -> float:
        """Memory held × predicted time still to hold it (block·seconds)."""
        return len(pin.blocks) * max(pin.predicted_return - now, 0.0)

    def relieve(self, needed_blocks: int, free_blocks: Callable[[], int], now: float) -> int:
        """Release the most wasteful pins until ``needed_blocks`` are free; returns pins released."""
        released = 0
        while self.pins and free_blocks() < needed_blocks:
            worst = max(self.pins.values(), key=lambda p: (self.waste(p, now), len(p.blocks)))
            self.release(worst.session_id, "pressure")
            released += 1
        return released

    def release_all(self, reason: str) -> None:
        for sid in list(self.pins):
            self.release(sid, reason)
