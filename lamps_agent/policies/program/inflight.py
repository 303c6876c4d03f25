"""The programs in flight and the fluid footprint they commit: what the ``program`` gate counts.

A program enters when its first turn is admitted (or a later turn of one never seen starts) and
leaves when its last turn ends, when it is aborted, or when it is forgotten as stale.  Each holds
its footprint term ``(c + P) / 2`` (:meth:`~.policy.ProgramPolicy.footprint_term`); the table keeps
their sum, ``committed``, and the part of it held by programs waiting on a tool, so that
:meth:`ProgramsInFlight.resident` — what the gate counts — leaves out a program in a tool whose KV
is off the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from lamps_agent.scheduler.paused import PausedKV


@dataclass(slots=True)
class InFlight:
    """One program in flight."""

    agent: str
    tenant: str | None  # the client it came from (Program.tenant)
    first_prompt: int
    admitted_seq: int  # the preemption order: the most recently admitted program goes first
    term: float  # its footprint term, from its current turn's start
    last_seen: float
    turn: int  # the request id of its current turn
    overdue_at: float = math.inf  # in a tool: when it is forgotten if it has not come back
    service_s: float = 0.0  # its turns' decode time alone and its tools' time so far
    # Its current turn left the GPU with no word of where to: a finish, a pause or a preemption
    # follows a turn's leaving at once, so only an abort (Scheduler.abort) leaves this set.
    left: bool = False
    # Its current turn waits in the queue: alive whatever the time (the queue holds it, and an
    # abort tells the policy), so never forgotten as not heard of.
    waiting: bool = False

    @property
    def in_tool(self) -> bool:
        return self.overdue_at != math.inf


class ProgramsInFlight(Mapping[Hashable, InFlight]):
    """The programs in flight by :func:`~.keys.program_key`, with their committed footprint."""

    def __init__(self) -> None:
        self._records: dict[Hashable, InFlight] = {}
        self.committed = 0.0  # Σ footprint terms of the programs in flight
        self._in_tool = 0.0  # the part of it of programs in a tool
        self.admissions = 0  # programs that entered

    def __getitem__(self, key: Hashable) -> InFlight:
        return self._records[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def find(self, key: Hashable) -> InFlight | None:
        """The record of ``key``, or None (a plain lookup, faster than ``Mapping.get``)."""
        return self._records.get(key)

    def enter(
        self,
        key: Hashable,
        *,
        agent: str,
        tenant: str | None = None,
        first_prompt: int,
        term: float,
        turn: int,
        now: float,
    ) -> None:
        """Program ``key`` enters with its turn ``turn`` (a request id)."""
        self.admissions += 1
        self._records[key] = InFlight(
            agent=agent,
            tenant=tenant,
            first_prompt=first_prompt,
            admitted_seq=self.admissions,
            term=term,
            last_seen=now,
            turn=turn,
        )
        self.committed += term

    def turn_started(self, flight: InFlight, *, term: float, turn: int, now: float) -> None:
        """A turn of ``flight`` (request id ``turn``) became schedulable: its term is this
        turn's, counted in full."""
        if flight.in_tool:
            self._in_tool -= flight.term
        self.committed += term - flight.term
        flight.term = term
        flight.last_seen = now
        flight.overdue_at = math.inf
        flight.turn = turn
        flight.left = False

    def tool_called(self, flight: InFlight, *, now: float, gap: float, grace: float) -> None:
        """``flight`` is in a tool predicted to last ``gap`` s: forgotten if not back by
        ``2 · gap + grace``."""
        flight.last_seen = now
        flight.left = False
        if not flight.in_tool:
            self._in_tool += flight.term
        flight.overdue_at = now + 2 * gap + grace

    def leave(self, key: Hashable) -> InFlight | None:
        flight = self._records.pop(key, None)
        if flight is not None:
            self.committed -= flight.term
            if flight.in_tool:
                self._in_tool -= flight.term
            if not self._records:
                self.committed = self._in_tool = 0.0  # no drift from float sums
        return flight

    def drop_stale(self, *, now: float, stale_s: float) -> list[InFlight]:
        """Forget the programs that will not come back: aborted, not heard of in ``stale_s``
        (unless waiting in the queue), or overdue in a tool.  Returns them."""
        if not self._records:
            return []
        horizon = now - stale_s
        stale = [
            key
            for key, f in self._records.items()
            if (f.last_seen < horizon and not f.waiting) or f.overdue_at < now or f.left
        ]
        return [f for f in map(self.leave, stale) if f is not None]

    def resident(self, pinned: Iterable[PausedKV]) -> float:
        """The fluid footprint of the programs whose KV is on the GPU: all in flight, except those
        waiting on a tool with their KV swapped or discarded (``pinned``: the pins, keyed by
        program)."""
        resident = self.committed - self._in_tool
        for paused in pinned:  # pins are few: each holds GPU memory
            flight = self._records.get(paused.key)
            if flight is not None and flight.in_tool:
                resident += flight.term
        return max(resident, 0.0)

    def resident_by_tenant(self, pinned: Iterable[PausedKV]) -> dict[str | None, float]:
        """:meth:`resident` split by tenant (one pass over the programs in flight)."""
        kept = {paused.key for paused in pinned}
        by_tenant: dict[str | None, float] = {}
        for key, flight in self._records.items():
            if not flight.in_tool or key in kept:
                by_tenant[flight.tenant] = by_tenant.get(flight.tenant, 0.0) + flight.term
        return by_tenant
