"""The program policy's keys: which program a request is a turn of, and the queue order."""

from __future__ import annotations

import math

from lamps_agent.policies.program import ADMITTED, NEW, program_key, program_step
from lamps_agent.policies.program.keys import as_admitted, lamps_aging_key, program_queue_key
from tests.core.program.helpers import serving_turn, sim_request


def test_a_program_is_its_session_where_the_engine_names_one_else_its_request() -> None:
    assert program_key(sim_request(7)) == 7
    turn = serving_turn(8, session="s1", step=3, prompt=100)
    assert program_key(turn) == "s1"
    assert program_step(turn) == 3
    req = sim_request(9)
    req.start_next_segment()
    assert program_step(req) == 1


def test_every_later_turn_sorts_ahead_of_every_new_program() -> None:
    early_new = program_queue_key(sim_request(1), cls=NEW, entered=0.0)
    late_turn = program_queue_key(sim_request(2), cls=ADMITTED, entered=1e9)
    assert late_turn < early_new
    # Within a class: entered, then arrival, then the request id.
    a = program_queue_key(sim_request(3), cls=NEW, entered=5.0)
    b = program_queue_key(sim_request(4), cls=NEW, entered=5.0)
    assert a < b and a[-1] == 3.0


def test_an_admitted_program_keeps_its_place_in_the_later_turns_class() -> None:
    key = program_queue_key(sim_request(1), cls=NEW, entered=12.5)
    assert as_admitted(key) == (ADMITTED, 12.5, 1.0, 1.0)


def test_with_the_rules_off_the_key_is_lamps_agings_order_in_seconds() -> None:
    req = sim_request(1)
    key = lamps_aging_key(req, now=100.0, aging_s=10.0, area=math.e**2)
    assert key[0] == ADMITTED and math.isclose(key[1], 120.0)
    # Areas below 1 token·s count as 1: no negative handicap.
    assert lamps_aging_key(req, now=100.0, aging_s=10.0, area=0.01)[1] == 100.0
