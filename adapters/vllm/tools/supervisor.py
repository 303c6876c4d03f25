"""Watching a cluster's replicas: a dead one is reported, its process group killed, and it is
started again after a back-off (docs/vllm.md, "Many replicas").

:class:`Supervisor` starts no process itself: it is handed the replicas and three verbs — start
replica ``i`` again, does this URL serve, kill this process group — so tests drive it with fake
processes and a fake clock.  The router needs no telling: a replacement listens on the dead
replica's port, and the router's health check (every 2 s) marks that URL healthy again.

A replica's life: ``SERVING`` → (its server exits) → its whole process group is killed (vLLM's
engine core, worker and resource tracker would otherwise live on, re-parented to PID 1) →
``WAITING`` for the back-off → ``STARTING`` (a new server on the same port) → ``SERVING`` once
``/health`` answers.  A replica that dies again before it served ``Backoff.reset_after_s`` waits
twice as long; one that does not serve within the start-up timeout is killed and counts as dead.
With restarts off a dead replica ends ``STOPPED``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol


class Phase(Enum):
    SERVING = "serving"
    STARTING = "starting"  # started (again), /health not answering yet
    WAITING = "waiting"  # dead, its restart is due later
    STOPPED = "stopped"  # dead, not restarted


class Process(Protocol):
    """What the supervisor needs of a process (``subprocess.Popen`` or a test's fake)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


class Watched(Protocol):
    """A replica as the supervisor sees it (``cluster.Member``)."""

    name: str
    url: str
    log: Path

    @property
    def proc(self) -> Process: ...


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Seconds before restart ``k`` of a replica that keeps dying: ``first_s * factor**k``, at
    most ``most_s``; a replica that served ``reset_after_s`` starts again from ``first_s``."""

    first_s: float = 1.0
    factor: float = 2.0
    most_s: float = 60.0
    reset_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.factor < 1 or self.most_s < self.first_s:
            raise ValueError(f"bad back-off {self}")

    def delay(self, num_quick_deaths: int) -> float:
        return min(self.most_s, self.first_s * self.factor ** max(0, num_quick_deaths - 1))


@dataclass(slots=True)
class Slot:
    """One replica's place in the cluster and its history."""

    index: int
    member: Watched
    phase: Phase = Phase.STARTING
    since: float = 0.0  # when the current phase began
    died_at: float | None = None  # the last death, until the replacement serves
    due: float = 0.0  # WAITING: when the restart is due
    num_restarts: int = 0
    num_quick_deaths: int = 0  # deaths since it last served reset_after_s


class Supervisor:
    """Call :meth:`check` every second or so; it never blocks longer than one health probe."""

    def __init__(
        self,
        members: Sequence[Watched],
        *,
        respawn: Callable[[int], Watched],
        serves: Callable[[str], bool],
        kill_group: Callable[[Process], int],
        say: Callable[[str], None],
        restart: bool = True,
        backoff: Backoff | None = None,
        start_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        now = clock()
        self.slots = [
            Slot(index=i, member=m, phase=Phase.SERVING, since=now) for i, m in enumerate(members)
        ]
        self.restart = restart
        self.backoff = backoff or Backoff()
        self.start_timeout_s = start_timeout_s
        self._respawn, self._serves, self._kill_group = respawn, serves, kill_group
        self._say, self._clock = say, clock

    @property
    def num_serving(self) -> int:
        return sum(s.phase is Phase.SERVING for s in self.slots)

    def check(self) -> bool:
        """One look at every replica; True if any replica changed phase."""
        changed = False
        for slot in self.slots:
            changed |= self._check(slot, self._clock())
        return changed

    def _check(self, slot: Slot, now: float) -> bool:
        if slot.phase in (Phase.SERVING, Phase.STARTING):
            code = slot.member.proc.poll()
            if code is not None:
                self._on_death(slot, now, f"died ({describe_exit(code)})")
                return True
        if slot.phase is Phase.SERVING:
            if now - slot.since >= self.backoff.reset_after_s:
                slot.num_quick_deaths = 0
            return False
        if slot.phase is Phase.STARTING:
            if self._serves(slot.member.url):
                self._on_serving(slot, now)
                return True
            if now - slot.since > self.start_timeout_s:
                self._on_death(slot, now, f"not serving {self.start_timeout_s:.0f} s after start")
                return True
            return False
        if slot.phase is Phase.WAITING and now >= slot.due:
            slot.member = self._respawn(slot.index)
            slot.num_restarts += 1
            slot.phase, slot.since = Phase.STARTING, now
            return True
        return False

    def _on_death(self, slot: Slot, now: float, what: str) -> None:
        name, log = slot.member.name, slot.member.log
        num_killed = self._kill_group(slot.member.proc)
        left = f"{num_killed} process{'es' if num_killed != 1 else ''} of its group killed"
        slot.died_at = now if slot.died_at is None else slot.died_at
        if not self.restart:
            slot.phase, slot.since = Phase.STOPPED, now
            self._say(f"{name}: {what}, log {log}; {left}; not restarted (--no-restart)")
            return
        slot.num_quick_deaths += 1
        delay = self.backoff.delay(slot.num_quick_deaths)
        slot.phase, slot.since, slot.due = Phase.WAITING, now, now + delay
        self._say(
            f"{name}: {what}, log {log}; {left}; restart {slot.num_restarts + 1} in {delay:.3g} s"
        )

    def _on_serving(self, slot: Slot, now: float) -> None:
        down = f", {now - slot.died_at:.0f} s after its death" if slot.died_at is not None else ""
        self._say(f"{slot.member.name}: serving again (restart {slot.num_restarts}{down})")
        slot.phase, slot.since, slot.died_at = Phase.SERVING, now, None


def describe_exit(code: int) -> str:
    """``-9`` -> ``"killed by SIGKILL"``, ``3`` -> ``"exit status 3"`` (Popen's convention)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


__all__ = ["Backoff", "Phase", "Process", "Slot", "Supervisor", "Watched", "describe_exit"]
