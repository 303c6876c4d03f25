"""Where new programs wait before their first token: the core's split, in the simulator."""

from __future__ import annotations

import pytest

from lamps_agent.policies import make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import load_preset
from lamps_agent.request import Request
from lamps_agent.scheduler.waits import FirstTurnWaits, is_first_turn
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import generate_programs, poisson_workload
from tests.core.conftest import make_program


def _request(rid: int, *, seg_index: int = 0) -> Request:
    program = make_program(f"p{rid}", [(10, 1.0, 5)] * 3)
    return Request(request_id=rid, program=program, arrival_time=0.0, seg_index=seg_index)


def test_each_cause_counts_once_per_iteration_and_only_for_first_turns() -> None:
    waits = FirstTurnWaits()
    req, later = _request(1), _request(2, seg_index=1)
    assert is_first_turn(req) and not is_first_turn(later)
    req.enqueued_iteration, req.enqueued_at = 3, 1.0
    waits.enqueued(req)
    for iteration in (3, 3, 4):  # a walk asked twice in iteration 3 counts once
        waits.refused(req, iteration)
        waits.refused(later, iteration)
        waits.walk_closed(iteration)
    waits.not_placed(req, 5)
    waits.admitted(req, iteration=7, now=2.5)
    waits.admitted(later, iteration=7, now=2.5)
    waits.first_token(req, 3.0)
    assert (waits.turns, waits.iterations, waits.gate, waits.placement) == (1, 4, 2, 1)
    assert waits.queue_s == pytest.approx(1.5) and waits.prefill_s == pytest.approx(0.5)
    summary = waits.summary()
    assert summary["behind_iterations"] == 1  # iteration 6: neither refused nor next in line


def test_a_walk_the_gate_ended_ahead_of_a_new_program_holds_it_too() -> None:
    waits = FirstTurnWaits()
    head, behind = _request(1), _request(2)
    waits.enqueued(head)
    waits.enqueued(behind)
    for iteration in (0, 1, 2):
        waits.refused(head, iteration)  # the head is refused and the walk ends there
        waits.walk_closed(iteration)
    waits.refused(behind, 3)
    waits.walk_closed(3)
    waits.walk_closed(4)  # a refusal further back, in the step that admits both
    waits.admitted(head, iteration=4, now=1.0)
    waits.admitted(behind, iteration=4, now=1.0)
    assert (waits.iterations, waits.gate, waits.refused_own) == (8, 8, 4)


def test_a_preempted_first_turn_counts_its_first_admission_only() -> None:
    waits = FirstTurnWaits()
    req = _request(1)
    waits.admitted(req, iteration=2, now=1.0)
    req.preemptions = 1
    waits.admitted(req, iteration=9, now=5.0)
    assert waits.turns == 1 and waits.iterations == 2


def _run(policy_name: str, **options: object) -> Simulator:
    preset = load_preset("a100-gptj6b")
    policy = make_policy(
        policy_name, predictor=make_predictor("oracle", seed=1), preset=preset, **options
    )
    programs = [p for p in generate_programs(90, seed=5) if p.segments[-1].prompt_tokens < 4000]
    sim = Simulator(
        preset=preset, policy=policy, arrivals=poisson_workload(programs, qps=8, seed=5)
    )
    sim.run(RunLabels(policy=policy_name, predictor="oracle"))
    return sim


@pytest.mark.parametrize("policy", ["vllm", "program"])
def test_the_split_accounts_for_every_first_turn_of_a_run(policy: str) -> None:
    sim = _run(policy, load_window_s=6) if policy == "program" else _run(policy)
    waits = sim.scheduler.first_turn_waits
    done = len(sim._done)
    assert waits.turns == waits.prefills == done  # one first turn per program, each prefilled
    assert waits.gate + waits.placement <= waits.iterations
    assert waits.prefill_s > 0
    if policy == "vllm":
        assert waits.gate == 0  # no gate to refuse
    assert not waits._waiting and not waits._admitted_at  # nothing left over after the run


def test_the_gate_shows_where_it_holds_new_programs() -> None:
    waits = _run("program", load_window_s=6, target_utilization=0.2).scheduler.first_turn_waits
    assert waits.gate > 0
