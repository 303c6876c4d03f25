"""Continuum: the TTL rule (Eq. 2), its cold start, η and T, program-level FCFS, expiry, release."""

from __future__ import annotations

import numpy as np
import pytest

from lamps_agent.policies import make_policy
from lamps_agent.policies.continuum import (
    DEFAULT_TTL_S,
    PINNED,
    UNPINNED,
    ContinuumPolicy,
    Memoryfulness,
    ToolCallHistory,
    ttl_by_expected_benefit,
)
from lamps_agent.predictors import Outcome, make_predictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import PausedKV, Scheduler
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import poisson_workload
from tests.core.conftest import make_program


def _policy(preset: Preset, **options: object) -> tuple[ContinuumPolicy, Scheduler]:
    policy = make_policy("continuum", predictor=make_predictor("oracle"), preset=preset, **options)
    assert isinstance(policy, ContinuumPolicy)
    return policy, Scheduler(preset=preset, policy=policy)


def _request(
    rid: int, *, arrival: float, tool_s: float = 1.0, session: str | None = None
) -> Request:
    program = make_program(f"p{rid}", [(20, tool_s, 10)] * 3)
    if session is not None:
        program = Program(
            program_id=program.program_id,
            agent=program.agent,
            segments=program.segments,
            session_id=session,
        )
    return Request(request_id=rid, program=program, arrival_time=arrival)


def _pause(sched: Scheduler, req: Request, *, override: KVStrategy | None = None) -> KVStrategy:
    sched.add_request(req)
    sched.admit(req)
    req.kv_tokens = req.segment.prompt_tokens + 20
    req.generated = 20
    outcome = Outcome(output_tokens=20, tool="tool", tool_duration=1.0, returned_tokens=10)
    got = sched.end_turn(req, outcome, continues=True, override=override)
    assert got is not None
    return got


def test_ttl_maximises_the_expected_benefit_over_the_samples() -> None:
    # P(τ)·B − τ at τ = 1, 2, 3, 10 with B = 5: 0.25, 0.5, 0.75, −5 (τ = 0: 0).
    assert ttl_by_expected_benefit([1.0, 2.0, 3.0, 10.0], 5.0) == 3.0
    assert ttl_by_expected_benefit([1.0, 2.0, 3.0, 10.0], 40.0) == 10.0  # 30 beats 27
    assert ttl_by_expected_benefit([1.0, 2.0, 3.0, 10.0], 0.5) == 0.0  # not worth any pin
    assert ttl_by_expected_benefit([1.0, 1.0, 4.0], 3.0) == 1.0  # P jumps to 2/3 at τ = 1


def test_cold_start_uses_the_fixed_ttl_then_global_then_per_tool_records() -> None:
    history = ToolCallHistory(k=3)
    assert history.ttl("grep", 100.0) == DEFAULT_TTL_S  # no records at all
    history.observe("build", 5.0)
    assert history.ttl("build", 100.0) == 0.0  # the tool's mean exceeds T_default: no pin
    for d in (0.5, 0.5, 0.5):
        history.observe("grep", d)
    # 4 records > k: the global distribution, since grep has only 3 (≤ k).
    assert history.ttl("grep", 100.0) == 5.0
    history.observe("grep", 0.5)
    assert history.ttl("grep", 100.0) == 0.5  # grep's own 4 records now


def test_memoryfulness_is_minus_the_correlation_of_served_and_remaining_turns() -> None:
    eta = Memoryfulness()
    assert eta.eta == 1.0  # undefined: fully memoryful, as the cold start assumes
    for n in (4, 4, 4):
        eta.observe(n)
    assert eta.eta == pytest.approx(1.0)  # every program the same length
    mixed = Memoryfulness()
    pairs = []
    for n in (1, 2, 8, 3):
        mixed.observe(n)
        pairs += [(k, n - k) for k in range(n)]
    k, rest = np.array(pairs, dtype=float).T
    assert mixed.eta == pytest.approx(-np.corrcoef(k, rest)[0, 1])


def test_the_benefit_adds_the_queueing_delay_of_evicted_turns(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    req = _request(1, arrival=0.0)
    assert _pause(sched, req, override=KVStrategy.DISCARD) is KVStrategy.DISCARD
    paused_tokens = req.segment.context_at_pause
    sched.set_time(1.0)
    sched.tool_returned(req, Outcome(output_tokens=20, tool="tool", tool_duration=1.0,
                                     returned_tokens=10))  # fmt: skip
    assert req.queue_key[0] == UNPINNED
    sched.set_time(4.0)
    sched.admit(req)
    assert policy.queue_delay == pytest.approx(3.0)  # T: it waited 3 s without its KV
    reload = small_preset.cost.prefill_time(paused_tokens, small_preset.token_budget)
    probe = PausedKV(key="x", tokens=paused_tokens, blocks=1, paused_at=0.0, predicted_return=1.0)
    assert policy.benefit(probe) == pytest.approx(3.0 * policy.memoryfulness.eta + reload)


def test_program_level_fcfs_and_pinned_programs_first(small_preset: Preset) -> None:
    _, sched = _policy(small_preset)
    # A session's first turn at 0, a new program at 5, the session's next turn (a request of its
    # own, as the vLLM plug-in makes it) at 10: the session keeps its arrival and goes first.
    first = _request(1, arrival=0.0, session="S")
    sched.add_request(first)
    sched.admit(first)
    newcomer = _request(2, arrival=5.0)
    sched.add_request(newcomer)
    later = _request(3, arrival=10.0, session="S")
    sched.add_request(later)
    assert later.queue_key < newcomer.queue_key
    assert [r.request_id for r in sched.admissible(8)] == [3, 2]
    # A program whose KV is pinned goes ahead of an older one that lost it.
    pinned = _request(4, arrival=20.0)
    assert _pause(sched, pinned) is KVStrategy.PRESERVE  # cold start: the fixed TTL
    outcome = Outcome(output_tokens=20, tool="tool", tool_duration=1.0, returned_tokens=10)
    sched.set_time(1.0)
    sched.tool_returned(pinned, outcome)
    assert pinned.queue_key[0] == PINNED
    assert pinned.queue_key < newcomer.queue_key


def test_a_pin_lives_for_its_ttl_and_is_discarded_at_expiry(small_preset: Preset) -> None:
    policy, sched = _policy(small_preset)
    req = _request(1, arrival=0.0, tool_s=30.0)
    assert _pause(sched, req) is KVStrategy.PRESERVE
    pin = sched.paused.get(req.request_id)
    assert pin is not None and pin.expires_at == pytest.approx(DEFAULT_TTL_S)
    sched.set_time(DEFAULT_TTL_S + 0.01)
    sched.schedule()
    assert req.state is RequestState.PAUSED_DISCARDED and sched.counters.pins_expired == 1
    # With a learned distribution whose benefit does not cover any pin: no pin at all.
    for _ in range(policy.history.k + 1):
        policy.history.observe("tool", 30.0)
    req2 = _request(2, arrival=1.0, tool_s=30.0)
    assert _pause(sched, req2) is KVStrategy.DISCARD


def test_pressure_releases_the_latest_programs_pin_first(small_preset: Preset) -> None:
    _, sched = _policy(small_preset)
    old, new = _request(1, arrival=0.0), _request(2, arrival=3.0)
    for req in (old, new):
        assert _pause(sched, req) is KVStrategy.PRESERVE
    released = sched.pin_to_release()
    assert released is not None and released.key == new.request_id


def test_continuum_runs_a_workload_and_learns_from_it(small_preset: Preset) -> None:
    programs = [make_program(f"p{i}", [(30, 0.5, 100)] * 4) for i in range(40)]
    arrivals = poisson_workload(programs, qps=2.0, seed=0)
    policy, _ = _policy(small_preset, cold_start_k=10)
    result = Simulator(preset=small_preset, policy=policy, arrivals=arrivals).run(
        RunLabels(policy="continuum", predictor="oracle")
    )
    assert result.summary.num_requests == 40
    assert policy.memoryfulness.eta == pytest.approx(1.0)  # every program has 4 turns
    assert not policy._programs  # finished programs are forgotten


def test_bad_options_are_refused(small_preset: Preset) -> None:
    with pytest.raises(ValueError):
        _policy(small_preset, delay_window=0)
    with pytest.raises(ValueError):
        _policy(small_preset, cold_start_k=-1)


def test_tool_durations_are_timed_from_the_pause_to_the_next_turn(small_preset: Preset) -> None:
    # As the paper measures them (the interval between a program's requests); an engine's
    # outcome may carry only the client's hint (the vLLM plug-in's), so it is not read.
    policy, sched = _policy(small_preset)
    req = _request(1, arrival=0.0)
    _pause(sched, req)
    sched.set_time(3.5)
    hinted = Outcome(output_tokens=20, tool="tool", tool_duration=99.0, returned_tokens=10)
    sched.tool_returned(req, hinted)
    assert policy.history._by_tool == {"tool": [3.5]}
