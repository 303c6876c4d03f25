"""Where a program's first turn spends the time to its first token, split by cause.

A new program's time to first token is its way to the queue (the front end; in a served engine
also the step running when it arrived), its wait in the queue, and its prefill.  The queue part has
three causes, counted once per iteration that the request waited through:

* ``gate``: the policy's admission gate ended the walk at it or at a request ahead of it (WAIT,
  ``program``: a held new program holds the new programs behind it too); ``refused``, the part
  where it was itself the one refused;
* ``placement``: it was next and the engine could not place it (its blocks did not fit, in the
  simulator's memory check or in vLLM's allocation);
* ``behind``: the rest — other requests went first and the step's seats or token budget ran out,
  or the engine could not place a request ahead of it.

Both engines keep it in the core scheduler, so the same figures come from a simulated and a served
run (the plug-in reports them in its stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamps_agent.request import Request


def is_first_turn(req: Request) -> bool:
    """Whether ``req``'s current turn is its program's first (a new program's)."""
    return req.program.first_step + req.seg_index == 0


@dataclass(slots=True)
class _Tally:
    """Iterations counted for one cause, each once (a walk asked twice in a step counts once)."""

    count: int = 0
    last: int = -1

    def add(self, iteration: int) -> None:
        if self.last != iteration:
            self.count += 1
            self.last = iteration


@dataclass(slots=True)
class _Waiting:
    closed_before: int  # walks the gate had closed when it was enqueued
    arrival_s: float = 0.0  # seconds from its arrival to its enqueue
    gate: _Tally = field(default_factory=_Tally)
    placement: _Tally = field(default_factory=_Tally)


@dataclass(slots=True)
class FirstTurnWaits:
    """Sums over the first turns admitted so far (a turn preempted and admitted again counts
    its first admission only)."""

    turns: int = 0  # first turns admitted
    arrival_s: float = 0.0  # seconds from their arrival (the engine's front end) to their enqueue
    iterations: int = 0  # iterations they waited, from their enqueue to their admission
    gate: int = 0  # ... of them where the gate ended the walk at it or ahead of it
    refused_own: int = 0  # ... of them where the gate refused it
    placement: int = 0  # ... of them next in line and not placed by the engine
    queue_s: float = 0.0  # seconds from their enqueue to their admission
    prefills: int = 0  # first turns whose first token came
    prefill_s: float = 0.0  # seconds from their admission to their first token
    _waiting: dict[int, _Waiting] = field(default_factory=dict, repr=False)
    _admitted_at: dict[int, float] = field(default_factory=dict, repr=False)
    _closed: int = 0  # iterations whose walk the gate ended
    _closed_at: int = -1  # ... the last of them

    def enqueued(self, req: Request) -> None:
        """``req`` joined the waiting queue (a request put back keeps its first count)."""
        if is_first_turn(req) and req.request_id not in self._waiting:
            self._waiting[req.request_id] = _Waiting(
                closed_before=self._closed, arrival_s=max(req.enqueued_at - req.arrival_time, 0.0)
            )

    def walk_closed(self, iteration: int) -> None:
        """The gate ended the admission walk at ``iteration``."""
        if self._closed_at != iteration:
            self._closed += 1
            self._closed_at = iteration

    def _entry(self, req: Request) -> _Waiting:
        return self._waiting.setdefault(req.request_id, _Waiting(closed_before=self._closed))

    def refused(self, req: Request, iteration: int) -> None:
        """The gate refused ``req`` at ``iteration``."""
        if is_first_turn(req):
            self._entry(req).gate.add(iteration)

    def not_placed(self, req: Request, iteration: int) -> None:
        """``req`` was next at ``iteration`` and the engine could not place it."""
        if is_first_turn(req):
            self._entry(req).placement.add(iteration)

    def admitted(self, req: Request, *, iteration: int, now: float) -> None:
        """``req`` left the queue for the GPU (before :attr:`Request.enqueued_iteration` moves)."""
        w = self._waiting.pop(req.request_id, None)
        if not is_first_turn(req) or req.preemptions or req.first_token_time is not None:
            return
        self.turns += 1
        self.iterations += max(iteration - req.enqueued_iteration, 0)
        if w is not None:
            # walks closed while it waited; not one in this iteration, which admitted it
            closed = self._closed - w.closed_before - (self._closed_at == iteration)
            self.gate += max(closed, w.gate.count)
            self.refused_own += w.gate.count
            self.placement += w.placement.count
            self.arrival_s += w.arrival_s
        self.queue_s += max(now - req.enqueued_at, 0.0)
        self._admitted_at[req.request_id] = now

    def first_token(self, req: Request, now: float) -> None:
        """``req``'s first token came at ``now``."""
        admitted_at = self._admitted_at.pop(req.request_id, None)
        if admitted_at is not None:
            self.prefills += 1
            self.prefill_s += max(now - admitted_at, 0.0)

    def forget(self, req: Request) -> None:
        """``req`` left the engine (finished or aborted)."""
        self._waiting.pop(req.request_id, None)
        self._admitted_at.pop(req.request_id, None)

    def summary(self) -> dict[str, float]:
        """Means per first turn: iterations waited in all and by cause (``behind`` the rest; the
        gate's own refusals are part of ``gate``), seconds from its arrival to its enqueue (the
        front end's, and in a served engine the step it arrived during), seconds queued, and
        seconds from admission to the first token."""
        n, p = max(self.turns, 1), max(self.prefills, 1)
        behind = max(self.iterations - self.gate - self.placement, 0)
        return {
            "turns": self.turns,
            "iterations": round(self.iterations / n, 3),
            "gate_iterations": round(self.gate / n, 3),
            "refused_iterations": round(self.refused_own / n, 3),
            "placement_iterations": round(self.placement / n, 3),
            "behind_iterations": round(behind / n, 3),
            "arrival_s": round(self.arrival_s / n, 6),
            "queue_s": round(self.queue_s / n, 6),
            "prefill_s": round(self.prefill_s / p, 6),
        }
