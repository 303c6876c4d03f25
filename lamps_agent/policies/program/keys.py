"""Which program a request belongs to, and the waiting-queue keys of the ``program`` policy.

A key is ``(class, entered, arrival, id)``: the class puts every later turn of an admitted program
(``ADMITTED``) ahead of every new program (``NEW``); ``entered`` is when the request entered the
queue plus a handicap in seconds (:mod:`.area`); the request id breaks the last tie.
"""

from __future__ import annotations

from collections.abc import Hashable

from lamps_agent.policies.lamps import aged_entry
from lamps_agent.request import Request

NEW, ADMITTED = 1.0, 0.0  # the key's class: later turns of admitted programs sort first


def program_key(req: Request) -> Hashable:
    """The program a request is a turn of: its session where the engine names one (the vLLM
    plug-in makes each turn a request of its own), else the request (the simulator's request is
    the whole program)."""
    session = req.program.session_id
    return req.request_id if session is None else session


def program_step(req: Request) -> int:
    """The turn's index in its program (its session's turn count where the engine names it)."""
    return req.program.first_step + req.seg_index


def program_queue_key(req: Request, *, cls: float, entered: float) -> tuple[float, ...]:
    """The key while the program-level rules are engaged: the class, then ``entered`` (the time
    it entered the queue plus its handicap)."""
    return (cls, entered, req.arrival_time, float(req.request_id))


def lamps_aging_key(req: Request, *, now: float, aging_s: float, area: float) -> tuple[float, ...]:
    """The key while the rules are off: ``lamps-aging``'s order in seconds, ``now + aging_s ·
    ln A`` (areas below 1 token·s count as 1), in the later turns' class."""
    return (ADMITTED, aged_entry(now, aging_s, area), req.arrival_time, float(req.request_id))


def as_admitted(key: tuple[float, ...]) -> tuple[float, ...]:
    """The same key in the later turns' class: a program admitted now returns to the queue, if
    it is preempted, as its later turns would."""
    return (ADMITTED, *key[1:])
