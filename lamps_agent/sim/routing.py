"""Routing policies of a simulated fleet: which replica runs an agent's next turn.

A router is asked once per turn — a program's first turn when it arrives, and every later turn
when its tool returns — and sees what a router in front of real engines can see: each replica's
load (turns in flight and their context tokens, :class:`ReplicaLoad`) and, for the turn, the
replica that ran the session's previous turn and how much of the session's KV each replica still
holds (pinned on its GPU or swapped to its host memory at home, its prefix in any replica's prefix
cache, :class:`Turn`).  Routing a turn away from
the replica that holds its KV costs that KV: the fleet releases it there and the turn recomputes
its context on the new replica (less what that replica's prefix cache still holds of it).

Five policies, found by name through :data:`ROUTERS`:

* ``round-robin`` — replicas in turn, per turn: balanced, blind to caches (nearly every later
  turn moves);
* ``least-loaded`` — the replica with the fewest context tokens in flight (then fewest turns);
* ``cache-aware`` — the replica holding the most of the session's KV; least loaded when none
  holds any (a first turn, or KV the policy discarded);
* ``session-affinity`` — every turn of a session on one replica, chosen by a hash of the session
  id (as a router that hashes a session header);
* ``affinity-spill`` — session affinity, but a turn whose home replica has more than
  ``spill_threshold`` × one replica's KV capacity in context tokens in flight beyond the least
  loaded replica moves there, and that replica becomes its home.

Every decision is deterministic: ties break on the replica index, and the hash is fixed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from lamps_agent.presets import Preset
from lamps_agent.registry import Registry, construct


@dataclass(slots=True)
class ReplicaLoad:
    """What a router sees of one replica: turns routed there that have not ended yet, and the
    context (prompt) tokens of those turns.  The fleet keeps these current; routers only read."""

    index: int
    requests: int = 0
    tokens: int = 0

    def key(self) -> tuple[int, int, int]:
        """Least loaded first: fewest tokens, then fewest turns, then the lowest index."""
        return (self.tokens, self.requests, self.index)


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One turn to place.  ``home`` is the replica that ran the session's previous turn (None
    for a first turn); ``held`` maps a replica to the session's KV tokens it still holds."""

    session: int
    prompt_tokens: int
    home: int | None = None
    held: Mapping[int, int] | None = None

    @property
    def is_first(self) -> bool:
        return self.home is None


def least_loaded(replicas: Sequence[ReplicaLoad]) -> int:
    return min(replicas, key=ReplicaLoad.key).index


def session_hash(session: int, buckets: int) -> int:
    """A fixed hash of a session id into ``buckets`` (Python's ``hash`` of a string changes per
    process; this does not): the 64-bit finaliser of SplitMix64."""
    z = (session + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % buckets


class Router(ABC):
    """Places every turn of a fleet on a replica."""

    name: ClassVar[str]

    def __init__(self, *, replicas: int, preset: Preset) -> None:
        if replicas < 1:
            raise ValueError(f"a fleet needs at least 1 replica, got {replicas}")
        self.replicas = replicas
        self.preset = preset

    @abstractmethod
    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        """The index of the replica that runs ``turn``; ``loads`` is indexed by replica."""


class RoundRobinRouter(Router):
    name = "round-robin"

    def __init__(self, *, replicas: int, preset: Preset) -> None:
        super().__init__(replicas=replicas, preset=preset)
        self._next = 0

    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        index = self._next
        self._next = (index + 1) % self.replicas
        return index


class LeastLoadedRouter(Router):
    name = "least-loaded"

    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        return least_loaded(loads)


class CacheAwareRouter(Router):
    name = "cache-aware"

    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        if turn.held:
            best = max(turn.held.items(), key=lambda item: (item[1], -item[0]))
            if best[1] > 0:
                return best[0]
        return least_loaded(loads)


class SessionAffinityRouter(Router):
    name = "session-affinity"

    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        if turn.home is not None:
            return turn.home
        return session_hash(turn.session, self.replicas)


class AffinitySpillRouter(SessionAffinityRouter):
    name = "affinity-spill"

    def __init__(self, *, replicas: int, preset: Preset, spill_threshold: float = 0.1) -> None:
        super().__init__(replicas=replicas, preset=preset)
        if not spill_threshold >= 0:
            raise ValueError(f"spill_threshold must be >= 0, got {spill_threshold}")
        self.spill_threshold = spill_threshold
        self.spill_tokens = spill_threshold * preset.gpu_kv_tokens

    def route(self, turn: Turn, loads: Sequence[ReplicaLoad]) -> int:
        home = super().route(turn, loads)
        lightest = least_loaded(loads)
        if loads[home].tokens - loads[lightest].tokens > self.spill_tokens:
            return lightest
        return home


ROUTERS: Registry[type[Router]] = Registry("routing policy")
for _cls in (
    RoundRobinRouter,
    LeastLoadedRouter,
    CacheAwareRouter,
    SessionAffinityRouter,
    AffinitySpillRouter,
):
    ROUTERS.register(_cls.name)(_cls)


def make_router(name: str, *, replicas: int, preset: Preset, **options: Any) -> Router:
    """Build a registered router; unknown names raise an error listing the valid ones."""
    return construct(
        ROUTERS.get(name), f"routing {name!r}", replicas=replicas, preset=preset, **options
    )
