"""ThunderAgent: capacity admission, the periodic pause (acting first, reasoning marked, never
preempted) and resume (pending turns, then new programs, then acting; smallest first; best fit)."""

from __future__ import annotations

import math

import pytest

from lamps_agent.policies import make_policy
from lamps_agent.policies.thunderagent import (
    BUFFER_PER_PROGRAM,
    Status,
    ThunderAgentPolicy,
    best_fit_decreasing,
)
from lamps_agent.predictors import Outcome, make_predictor
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import Scheduler
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import poisson_workload
from tests.core.conftest import make_program

OUT = 20


def _policy(preset: Preset, **options: object) -> tuple[ThunderAgentPolicy, Scheduler]:
    policy = make_policy(
        "thunderagent", predictor=make_predictor("oracle"), preset=preset, **options
    )
    assert isinstance(policy, ThunderAgentPolicy)
    return policy, Scheduler(preset=preset, policy=policy)


def _request(rid: int, *, prompt: int = 1000) -> Request:
    program = make_program(f"p{rid}", [(OUT, 10.0, 10)] * 3, prompt=prompt)
    return Request(request_id=rid, program=program, arrival_time=float(rid))


def _run_turn(sched: Scheduler, req: Request) -> KVStrategy:
    """Admit ``req``'s turn and end it in a tool call."""
    sched.admit(req)
    req.kv_tokens = req.segment.prompt_tokens + OUT
    req.generated = OUT
    outcome = Outcome(output_tokens=OUT, tool="tool", tool_duration=10.0, returned_tokens=10)
    got = sched.end_turn(req, outcome, continues=True)
    assert got is not None
    return got


def _return(sched: Scheduler, req: Request) -> None:
    outcome = Outcome(output_tokens=OUT, tool="tool", tool_duration=10.0, returned_tokens=10)
    sched.tool_returned(req, outcome)


def _fit(policy: ThunderAgentPolicy, tokens: float) -> None:
    """Set λ so the capacity is ``tokens`` (tests count in tokens)."""
    memory = policy.view.memory
    policy.watermark = tokens / (memory.num_gpu_blocks * memory.block_size)


def test_new_programs_are_active_while_they_fit_and_nobody_waits(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    _fit(policy, 2 * (1000 + BUFFER_PER_PROGRAM) + 50)
    a, b, c = _request(1), _request(2), _request(3)
    for req in (a, b, c):
        sched.add_request(req)
    assert [p.active for p in policy.programs.values()] == [True, True, False]
    assert list(sched.admissible(8)) == [a, b]  # c waits for a resume
    _fit(policy, 10 * (1000 + BUFFER_PER_PROGRAM))
    d = _request(4)
    sched.add_request(d)
    assert not policy.programs[4].active  # room now, but c waits: d queues behind it


def test_pause_takes_acting_programs_smallest_first_and_drops_their_pins(
    small_preset: Preset,
) -> None:
    policy, sched = _policy(small_preset, acting_decay=False)
    small, large = _request(1, prompt=500), _request(2, prompt=1500)
    for req in (small, large):
        sched.add_request(req)
        assert _run_turn(sched, req) is KVStrategy.PRESERVE  # active: kept through the tool
        pin = sched.paused.get(req.request_id)
        assert pin is not None and pin.expires_at == math.inf
    assert policy.programs[1].status is Status.ACTING
    _fit(policy, 1500 + OUT + BUFFER_PER_PROGRAM + 300)  # one must go: the smaller
    sched.set_time(policy.interval_s)
    sched.schedule()
    assert not policy.programs[1].active and policy.programs[2].active
    assert small.state is RequestState.PAUSED_DISCARDED  # its KV left to the prefix cache
    assert large.state is RequestState.PAUSED_PRESERVED


def test_reasoning_programs_are_marked_and_paused_at_their_tool_call(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    a, b = _request(1, prompt=500), _request(2, prompt=900)
    for req in (a, b):
        sched.add_request(req)
        sched.admit(req)
    _fit(policy, 900 + 2 * BUFFER_PER_PROGRAM + 100)  # over by the smaller one
    policy.pause_until_safe()
    assert policy.programs[1].marked and not policy.programs[2].marked
    assert a in sched.running  # marked, not preempted
    a.kv_tokens = a.segment.prompt_tokens + OUT
    a.generated = OUT
    outcome = Outcome(output_tokens=OUT, tool="tool", tool_duration=10.0, returned_tokens=10)
    assert sched.end_turn(a, outcome, continues=True) is KVStrategy.DISCARD
    assert not policy.programs[1].active and policy.paused_count == 1


def test_resume_order_pending_then_new_then_acting_smallest_first(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset, acting_decay=False)
    _fit(policy, 100_000)
    acting, pending, big_pending = _request(1, prompt=300), _request(2), _request(3, prompt=2000)
    for req in (acting, pending, big_pending):
        sched.add_request(req)
        _run_turn(sched, req)
    _return(sched, acting)  # its second turn: past its first, it no longer counts as new
    sched.resume_paused(acting.request_id)
    _run_turn(sched, acting)
    for p in policy.programs.values():
        p.active = False  # all three paused while in their tools
    _return(sched, pending)
    _return(sched, big_pending)
    fresh = _request(4, prompt=400)
    sched.add_request(fresh)
    assert not policy.programs[4].active
    # Room for the first two of the priority order: pending (1030; its sibling 2030 does not
    # fit), then the new one (400); the acting one (350) no longer fits.
    _fit(policy, 1030 + 400 + 2 * BUFFER_PER_PROGRAM + 50)
    resumed = policy.resume()
    assert [p.request.request_id for p in resumed if p.request] == [2, 4]
    _fit(policy, 100_000)
    assert {p.request.request_id for p in policy.resume() if p.request} == {1, 3}


def test_resume_counts_acting_tokens_with_the_decay(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    holder = _request(1, prompt=3000)
    sched.add_request(holder)
    _run_turn(sched, holder)  # acting since t = 0, 3020 tokens
    _fit(policy, 3020 + BUFFER_PER_PROGRAM + 1000)
    waiting = _request(2, prompt=2000)
    sched.add_request(waiting)
    assert not policy.programs[2].active  # it does not fit beside the acting program ...
    sched.set_time(4.0)
    assert policy.remaining_capacity(decay=True) == pytest.approx(
        policy.capacity_tokens - 3020 * 2**-4 - BUFFER_PER_PROGRAM
    )
    assert [p.request for p in policy.resume()] == [waiting]  # ... until its weight decays


def test_the_check_runs_every_interval(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    a = _request(1)
    sched.add_request(a)
    _run_turn(sched, a)
    _fit(policy, 10.0)  # far over capacity
    sched.schedule()  # t = 0: the first check is due at Δt
    assert policy.programs[1].active
    sched.set_time(policy.interval_s - 0.1)
    sched.schedule()
    assert policy.programs[1].active
    sched.set_time(policy.interval_s)
    sched.schedule()
    assert not policy.programs[1].active


def test_a_held_turn_is_resumed_after_the_timeout(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset, wait_timeout_s=60.0)
    _fit(policy, 10.0)
    req = _request(1)
    sched.add_request(req)
    assert list(sched.admissible(8)) == []
    sched.set_time(60.0)
    assert list(sched.admissible(8)) == [req]


def test_best_fit_decreasing_places_the_largest_on_the_roomiest_bin() -> None:
    assert best_fit_decreasing([300, 900, 500], [1000, 1200]) == [0, 1, 0]
    assert best_fit_decreasing([5000, 200], [1000]) == [None, 0]  # too large: skipped


def test_pressure_releases_the_smallest_pin_first(small_preset: Preset) -> None:
    _, sched = _policy(small_preset)
    large, small = _request(1, prompt=1500), _request(2, prompt=400)
    for req in (large, small):
        sched.add_request(req)
        _run_turn(sched, req)
    released = sched.pin_to_release()
    assert released is not None and released.key == small.request_id


def test_thunderagent_runs_a_workload_to_the_end(small_preset: Preset) -> None:
    programs = [make_program(f"p{i}", [(30, 2.0, 300)] * 4, prompt=800) for i in range(40)]
    arrivals = poisson_workload(programs, qps=4.0, seed=0)
    policy, _ = _policy(small_preset)
    result = Simulator(preset=small_preset, policy=policy, arrivals=arrivals).run(
        RunLabels(policy="thunderagent", predictor="oracle")
    )
    assert result.summary.num_requests == 40
    assert policy.paused_count > 0 and policy.resumed > 0  # the memory pressed, it paused
    assert not policy.programs


def test_bad_options_are_refused(small_preset: Preset) -> None:
    for bad in ({"watermark": 0.0}, {"interval_s": -1.0}, {"wait_timeout_s": 0.0}):
        with pytest.raises(ValueError):
            _policy(small_preset, **bad)


def test_held_turns_wait_behind_active_ones_and_a_resumed_one_passes_the_still_held(
    small_preset: Preset,
) -> None:
    policy, sched = _policy(small_preset)
    _fit(policy, 1100 + 50)  # one program of 1000 tokens at a time
    first, big, small = _request(1), _request(2, prompt=900), _request(3, prompt=500)
    for req in (first, big, small):
        sched.add_request(req)
    assert [policy.programs[k].active for k in (1, 2, 3)] == [True, False, False]
    assert first.queue_key < big.queue_key < small.queue_key  # held turns after open ones
    assert list(sched.admissible(8)) == [first]
    sched.admit(first)
    _fit(policy, 1100 + 600 + 50)  # room for the small one only, beside the first
    assert [p.request for p in policy.resume()] == [small]
    assert list(sched.admissible(8)) == [small]  # past the big one, still held
