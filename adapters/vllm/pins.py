"""Preserved KV in vLLM: a session's blocks pinned in the block pool while its agent runs a tool.

A pin is one reference taken on each full (hashed) block of a finished turn
(``BlockPool.touch``); while it is held the blocks cannot be evicted, so the session's next turn
finds its whole prefix in the prefix cache.  This module only executes: *when* a pin is taken or
released (next turn admitted, time to live, memory pressure, the policy's revisit, abort) is the
core scheduler's decision (:mod:`lamps_agent.scheduler`); the plug-in calls :meth:`PinStore.pin`
and :meth:`PinStore.release` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PinCounters:
    pinned: int = 0
    released: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.released[reason] = self.released.get(reason, 0) + 1


class PinStore:
    """Session id → the vLLM blocks it holds a reference on."""

    def __init__(
        self, *, touch: Callable[[Sequence[Any]], None], free: Callable[[Sequence[Any]], None]
    ) -> None:
        self._touch = touch
        self._free = free
        self.pins: dict[str, list[Any]] = {}
        self.pinned_blocks = 0
        self.counters = PinCounters()

    @staticmethod
    def pinnable(blocks: Sequence[Any]) -> list[Any]:
        """The full, hashed blocks: only those can be found again by the prefix cache."""
        return [
            b
            for b in blocks
            if getattr(b, "block_hash", None) is not None and not getattr(b, "is_null", False)
        ]

    def pin(self, session_id: str, blocks: Sequence[Any]) -> None:
        if session_id in self.pins:
            raise ValueError(f"session {session_id!r} already holds a pin")
        self._touch(blocks)
        self.pins[session_id] = list(blocks)
        self.pinned_blocks += len(blocks)
        self.counters.pinned += 1

    def release(self, session_id: str, reason: str) -> int:
        blocks = self.pins.pop(session_id, None)
        if blocks is None:
            return 0
        self._free(blocks[::-1])  # tail first: the prefix stays cached longest
        self.pinned_blocks -= len(blocks)
        self.counters.count(reason)
        return len(blocks)
