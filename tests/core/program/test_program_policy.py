"""The program-aware policy as a whole, driven through the core scheduler: its parts together
(threshold admission, sessions, learning, TTL at the pause, engage rule, reporting).
Each part's own behaviour is tested beside it (test_gate.py, test_footprint.py, ...)."""

from __future__ import annotations

import math

import pytest

from lamps_agent.policies import make_policy
from lamps_agent.policies.program import ADMITTED, NEW
from lamps_agent.predictors import Outcome, make_predictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import PausedKV, Scheduler
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import poisson_workload
from lamps_agent.workloads.longctx import generate_longctx
from tests.core.conftest import make_program
from tests.core.program.helpers import program_policy, serving_turn, sim_request


def test_threshold_holds_new_programs_but_never_a_later_turn(small_preset: Preset) -> None:
    # A budget of about one program: the first is admitted, the next new ones are held.
    policy, sched = program_policy(
        small_preset, target_utilization=0.15, open_below=0.0, engage_at=0.0
    )
    first, second, third = sim_request(1), sim_request(2), sim_request(3)
    for req in (first, second, third):
        sched.add_request(req)
    admitted = list(sched.admissible(10))
    assert admitted == [first]  # the gate refused the second and stopped the walk
    sched.admit(first)
    sched.sync_view()  # as every engine step does: the first program is running
    assert policy.committed + policy.footprint_term(second) > policy.budget_tokens
    assert list(sched.admissible(10)) == []
    # The first program's turn was preempted (or its tool returned to the queue): it goes first,
    # past the held new programs, though the budget is still exceeded.
    sched.preempt(first)
    assert first.queue_key[0] == ADMITTED and second.queue_key[0] == NEW
    assert list(sched.admissible(10)) == [first]


def test_a_held_program_waits_at_most_what_holding_it_could_save(small_preset: Preset) -> None:
    """Rent or buy: the gate holds a new program over its threshold for as many iterations as
    one recomputation of its footprint costs the running batch, then lets it through."""
    policy, sched = program_policy(
        small_preset, target_utilization=0.15, open_below=0.0, engage_at=0.0
    )
    first, second = sim_request(1), sim_request(2)
    sched.add_request(first)
    sched.add_request(second)
    assert list(sched.admissible(10)) == [first]
    sched.admit(first)
    sched.sync_view()
    cost, view = small_preset.cost, policy.view
    recompute = cost.prefill_time(policy.footprint_term(second), small_preset.token_budget)
    patience = policy.patience_for(second)
    assert patience == math.ceil(recompute * (view.num_running + 1) / view.decode_step_time)
    # A larger footprint, or more requests running, is worth a longer wait.
    assert policy.patience_for(sim_request(3, prompt=8000)) > patience
    sched.running.extend([sim_request(4), sim_request(5)])
    sched.sync_view()
    assert policy.patience_for(second) > patience
    del sched.running[1:]
    sched.sync_view()
    sched.iteration = second.enqueued_iteration + patience - 1
    sched.sync_view()
    assert list(sched.admissible(10)) == [] and policy.counters_waited_out == 0
    sched.iteration += 1
    sched.sync_view()
    assert list(sched.admissible(10)) == [second] and policy.counters_waited_out == 1
    # The operator's fixed patience replaces the derived one.
    assert program_policy(small_preset, patience=7)[0].patience_for(second) == 7


def test_an_engine_with_nothing_in_flight_admits_even_a_program_over_budget(
    small_preset: Preset,
) -> None:
    policy, sched = program_policy(
        small_preset, target_utilization=0.001, open_below=0.0, engage_at=0.0
    )
    big = sim_request(1, prompt=8000)
    sched.add_request(big)
    assert policy.footprint_term(big) > policy.budget_tokens
    assert list(sched.admissible(10)) == [big]


def test_the_policy_learns_footprints_from_finished_programs(small_preset: Preset) -> None:
    programs = [make_program(f"p{i}", [(30, 0.1, 100)] * 5, agent="x") for i in range(6)]
    arrivals = poisson_workload(programs, qps=0.5, seed=0)
    policy, _ = program_policy(small_preset)
    Simulator(preset=small_preset, policy=policy, arrivals=arrivals).run(
        RunLabels(policy="program", predictor="oracle")
    )
    assert policy.footprints.known("x")
    got = policy.footprints.predict(agent="x", step=0, context=200)
    assert got.remaining_turns == pytest.approx(5)
    assert got.growth == pytest.approx(130 * 4 / 5 + 30 / 5)
    assert not policy.in_flight and policy.committed == 0.0


def _paused_turn(sched: Scheduler, request_id: int) -> Request:
    req = sim_request(request_id, prompt=300)
    sched.add_request(req)
    sched.admit(req)
    req.move_to(RequestState.DECODING)
    req.kv_tokens = 350
    req.gpu_blocks = sched.memory.blocks_for(350)
    sched.memory.allocate(req.gpu_blocks)
    return req


def test_pin_gets_the_rules_ttl_and_is_swapped_or_discarded_at_it(small_preset: Preset) -> None:
    policy, sched = program_policy(small_preset, engage_at=0.0)
    for _ in range(20):  # a 10 ms tool: holding 350 tokens that long beats swap or recompute
        policy.durations.observe("tool", 0.01)
    req = _paused_turn(sched, 1)
    assert sched.pause(req) is KVStrategy.PRESERVE
    pin = sched.paused.get(req.request_id)
    assert isinstance(pin, PausedKV)
    grace = max(0.5 * 0.01, 2 * policy.view.decode_step_time)  # the backstop's, after τ
    assert pin.expires_at == pytest.approx(0.01 + grace)
    sched.set_time(0.005)
    assert sched.revisit_paused() == []
    sched.set_time(0.01)  # the policy's deadline: the pin goes, by least waste
    changes = sched.revisit_paused()
    assert [(p.key, s in (KVStrategy.SWAP, KVStrategy.DISCARD)) for p, s in changes] == [(1, True)]


def test_pins_lost_under_pressure_send_the_next_paused_turn_off_the_gpu(
    small_preset: Preset,
) -> None:
    """A pin the engine gives up under memory pressure ends as a discard (no engine here copies
    pinned KV out): once pins are being lost, the rule weighs that in and stops pinning."""
    policy, sched = program_policy(small_preset, engage_at=0.0)
    for _ in range(20):  # a 10 ms tool: alone, the rule pins (the test above)
        policy.durations.observe("tool", 0.01)
    first = _paused_turn(sched, 1)
    assert sched.pause(first) is KVStrategy.PRESERVE
    assert policy.state()["pins_lost_share"] == 0.0
    released = sched.pin_to_release()  # pressure: the core gives the pin up
    assert released is not None and released.key == 1
    assert policy.pin_losses.share == 1.0 and policy.state()["pins_lost_share"] == 1.0
    second = _paused_turn(sched, 2)
    assert sched.pause(second) in (KVStrategy.SWAP, KVStrategy.DISCARD)


def test_program_policy_runs_a_long_context_workload_without_losing_requests() -> None:
    preset = load_preset("h100-llama3-8b", overrides={"gpu_kv_gb": 8})
    programs = generate_longctx(30, seed=4, max_context=32_768)
    arrivals = poisson_workload(programs, qps=0.2, seed=0)
    policy, _ = program_policy(preset)
    sim = Simulator(preset=preset, policy=policy, arrivals=arrivals)
    result = sim.run(RunLabels(policy="program", predictor="oracle"))
    assert result.summary.num_requests == len(arrivals)
    assert result.summary.rejected == 0
    assert sim.scheduler.memory.free_gpu_blocks == sim.scheduler.memory.num_gpu_blocks
    assert sim.scheduler.memory.free_host_blocks == sim.scheduler.memory.num_host_blocks
    assert not policy.in_flight


def test_the_aging_bounds_follow_the_measured_time_scale(small_preset: Preset) -> None:
    """A new program's aging bound is one program lifetime, a later turn's one turn cycle, as
    the engine measures them; the prior before a tool has returned; an option replaces them."""
    policy, sched = program_policy(small_preset, engage_at=0.0)
    assert (policy.max_age(NEW), policy.max_age(ADMITTED)) == (60.0, 20.0)  # the prior
    lifetimes = policy.switch.lifetimes
    for cycle in (3.0, 4.0, 5.0):
        lifetimes.observe_cycle(cycle)
    # no program finished yet: its turns' cycle times the turns a program is expected to take
    assert policy.max_age(ADMITTED) == 4.0
    assert policy.max_age(NEW) == 4.0 * lifetimes.expected_turns
    lifetimes.observe(30.0)
    assert policy.max_age(NEW) == 30.0
    assert policy.state()["max_age_s"] == 30.0 and policy.state()["turn_max_age_s"] == 4.0
    # the key's handicap stays within the derived bound
    req = sim_request(1, prompt=8000)
    sched.add_request(req)
    assert 0.0 <= req.queue_key[1] - policy.view.now < 30.0
    fixed, _ = program_policy(small_preset, max_age_s=90.0, turn_max_age_s=7.0)
    fixed.switch.lifetimes.observe(30.0)
    assert (fixed.max_age(NEW), fixed.max_age(ADMITTED)) == (90.0, 7.0)


def test_the_forgetting_bounds_follow_the_measured_time_scale(small_preset: Preset) -> None:
    """How long a program in a tool is waited for past twice its predicted time, and how long
    one not heard of is kept, are a program lifetime and 30 of them as the engine measures
    them, so they mean the same on a replay at 1/20 of the time; the priors before; an option
    replaces the second."""
    policy, _ = program_policy(small_preset)
    assert (policy.tool_grace(), policy.stale_after()) == (30.0, 1800.0)  # the priors
    policy.switch.lifetimes.observe(3.0)  # programs live 3 s (a replay's time scale)
    assert (policy.tool_grace(), policy.stale_after()) == (3.0, 90.0)
    req = serving_turn(1, session="s", step=0, prompt=400)
    policy.on_turn_start(req)
    policy.on_admit(req)
    policy.on_tool_call(req, 0.5)
    assert policy.in_flight["s"].overdue_at == pytest.approx(policy.view.now + 2 * 0.5 + 3.0)
    fixed, _ = program_policy(small_preset, stale_s=600.0)
    fixed.switch.lifetimes.observe(3.0)
    assert fixed.stale_after() == 600.0


def test_a_program_waiting_in_the_queue_is_not_forgotten_however_long(
    small_preset: Preset,
) -> None:
    """Under overload a later turn can wait longer than the stale bound; it is alive (the
    queue holds it), and its footprint stays on the gate until it runs and leaves."""
    policy, sched = program_policy(small_preset, stale_s=10.0)
    first = serving_turn(1, session="s", step=0, prompt=400)
    sched.add_request(first)
    sched.admit(first)
    assert "s" in policy.in_flight
    later = serving_turn(2, session="s", step=1, prompt=600)
    sched.add_request(later, resumed=True)
    sched.set_time(1000.0)  # far past the stale bound, still queued
    policy.state()  # a look forgets what is stale
    assert "s" in policy.in_flight and policy.in_flight["s"].waiting
    sched.admit(later)
    assert not policy.in_flight["s"].waiting
    sched.set_time(1020.0)  # running and not heard of for 20 s: stale again
    policy.state()
    assert "s" not in policy.in_flight


def test_a_pins_backstop_scales_with_its_time_to_live(small_preset: Preset) -> None:
    """The scheduler's expiry of a pin the policy set comes half the pin's time to live after
    the policy's own deadline (at least two decode steps later), at any time scale."""
    policy, _ = program_policy(small_preset)
    step = policy.view.decode_step_time
    for tau in (0.1, 2.0):  # a replay's tool at 1/20 of the time, and the full one
        policy.pins.set("s", now=0.0, ttl=tau)
        paused = PausedKV(key="s", tokens=350, blocks=11, paused_at=0.0, predicted_return=tau)
        assert policy.pin_ttl(paused) == pytest.approx(tau + max(0.5 * tau, 2 * step))
        assert policy.pin_ttl(paused) is None  # asked once
    policy.pins.set("s", now=0.0, ttl=1e-6)  # shorter than a step: the policy still looks first
    paused = PausedKV(key="s", tokens=350, blocks=11, paused_at=0.0, predicted_return=0.0)
    assert policy.pin_ttl(paused) == pytest.approx(1e-6 + 2 * step)


def test_bad_options_are_refused(small_preset: Preset) -> None:
    for bad in (
        {"target_utilization": 0},
        {"max_age_s": 0},
        {"turn_max_age_s": -1.0},
        {"patience": 0},
        {"engage_at": -1},
        # A sensitivity study's knobs are the study's (benchmarks/program_policy.py), not options.
        {"footprint_source": "oracle"},
        {"footprint_error": 0.25},
        {"open_below": 2},
        {"stale_s": 0},
    ):
        with pytest.raises(ValueError):
            make_policy("program", predictor=make_predictor("oracle"), preset=small_preset, **bad)


def test_a_turn_that_paused_and_never_came_back_is_forgotten(small_preset: Preset) -> None:
    # The vLLM plug-in makes each turn a request of its own: the paused one never resumes.
    policy, sched = program_policy(small_preset)
    req = sim_request(1)
    sched.add_request(req)
    sched.admit(req)
    assert req.prediction is not None and policy.committed > 0
    outcome = Outcome(output_tokens=50, tool="tool", tool_duration=1.0, returned_tokens=500)
    sched.end_turn(req, outcome, continues=True, gap=1.0)  # the plug-in's report of the pause
    assert policy.resident_commitment() == 0.0  # in a tool, its KV not pinned
    sched.set_time(2 * 1.0 + 29.0)
    policy.admission_gate()
    assert 1 in policy.in_flight  # still within its tool's grace
    sched.set_time(2 * 1.0 + 31.0)
    policy.admission_gate()
    assert not policy.in_flight and policy.committed == 0.0


def test_a_serving_engines_turns_are_linked_into_one_program_by_session(
    small_preset: Preset,
) -> None:
    # A budget of about one program, as in the threshold test, but every turn its own request.
    policy, sched = program_policy(
        small_preset, target_utilization=0.15, open_below=0.0, engage_at=0.0
    )
    first = serving_turn(1, session="s1", step=0, prompt=2000)
    sched.add_request(first)
    sched.admit(first)
    outcome = Outcome(output_tokens=50, tool="tool", tool_duration=1.0, returned_tokens=0)
    policy.on_turn_end(first, outcome)  # the pause; this request never resumes
    assert "s1" in policy.in_flight
    newcomer = serving_turn(2, session="s2", step=0, prompt=2000)
    later = serving_turn(3, session="s1", step=1, prompt=2050, final=True)
    sched.add_request(newcomer)
    sched.add_request(later)
    # The session's next turn is a later turn of an admitted program: ahead of the new program,
    # and past the gate that holds the new one.
    assert later.queue_key[0] == ADMITTED and newcomer.queue_key[0] == NEW
    assert list(sched.admissible(10)) == [later]
    sched.admit(later)
    assert set(policy.in_flight) == {"s1"}
    policy.on_turn_end(
        later, Outcome(output_tokens=50, tool=None, tool_duration=0.0, returned_tokens=0)
    )
    assert not policy.in_flight and policy.committed == 0.0
    # The finished session taught the footprint predictor a two-turn program of its agent.
    hist = policy.footprints._agents["coder"]
    assert list(hist.turns) == [2]


def test_the_policy_reports_what_its_gate_holds(small_preset: Preset) -> None:
    # What a serving engine's statistics show (LAMPS_STATS_FILE): sessions linked, refusals.
    policy, sched = program_policy(
        small_preset, target_utilization=0.15, open_below=0.0, engage_at=0.0
    )
    first = serving_turn(1, session="s1", step=0, prompt=2000)
    sched.add_request(first)
    sched.admit(first)
    sched.add_request(serving_turn(2, session="s2", step=0, prompt=2000))
    assert list(sched.admissible(10)) == []  # over budget while s1 runs
    state = policy.state()
    assert state["in_flight"] == 1 and state["in_flight_in_tool"] == 0
    assert state["admissions"] == 1 and state["gate_refusals"] == 1
    assert state["committed_tokens"] == round(policy.committed, 1) > 0
    assert state["budget_tokens"] == round(policy.budget_tokens, 1)
    assert state["engaged"] == 1
    outcome = Outcome(output_tokens=50, tool="t", tool_duration=1.0, returned_tokens=0)
    sched.end_turn(first, outcome, continues=True, key="s1", override=KVStrategy.PRESERVE)
    assert policy.state()["in_flight_in_tool"] == 1
    assert policy.state()["agents_learned"] == 0
    policy.admission_gate()  # the gate's look: s1's KV is pinned, so it still counts
    assert policy.state()["committed_resident_tokens"] == state["committed_tokens"]


@pytest.mark.parametrize("kv", [KVStrategy.PRESERVE, KVStrategy.DISCARD, KVStrategy.SWAP])
def test_a_program_in_a_tool_counts_against_the_budget_only_while_its_kv_is_pinned(
    small_preset: Preset, kv: KVStrategy
) -> None:
    # WAIT's fluid load is the memory held: a program waiting on a tool with its KV off the GPU
    # holds none (the INFERCEPT traces' programs spend most of their life so), so it does not
    # hold a new program at the door; its next turn counts again and goes first.
    policy, sched = program_policy(small_preset, open_below=0.0, engage_at=0.0)
    other, first, waiting = (
        serving_turn(rid, session=f"s{rid}", step=0, prompt=2000) for rid in (0, 1, 2)
    )
    sched.add_request(other)
    capacity = policy.budget_tokens / policy.target_utilization
    policy.target_utilization = 2.5 * policy.footprint_term(other) / capacity  # two programs
    sched.admit(other)
    sched.add_request(first)
    sched.admit(first)
    sched.add_request(waiting)
    assert list(sched.admissible(10)) == []  # over budget while s0 and s1 run
    outcome = Outcome(output_tokens=50, tool="t", tool_duration=60.0, returned_tokens=0)
    assert sched.end_turn(first, outcome, continues=True, key="s1", gap=60.0, override=kv) is kv
    admitted = list(sched.admissible(10))
    assert admitted == ([] if kv is KVStrategy.PRESERVE else [waiting])
    s1 = policy.in_flight["s1"].term
    held = policy.committed - (0.0 if kv is KVStrategy.PRESERVE else s1)
    assert policy.resident_commitment() == pytest.approx(held)
    assert policy.state()["committed_resident_tokens"] == round(held, 1)
    # s1's tool returns: its next turn is a later turn of an admitted program, counted again
    sched.add_request(serving_turn(3, session="s1", step=1, prompt=2100), resumed=True)
    assert policy.resident_commitment() == pytest.approx(policy.committed)


def test_no_predicted_peak_outgrows_the_engines_context(small_preset: Preset) -> None:
    # An agent never seen gets the prior (8 turns × 1,500 tokens): on a small engine (the CPU
    # engine's tiny model, a scaled workload) that is more than any context it can hold, and the
    # gate would admit one program at a time until three had finished.
    def gate(limit: int | None) -> list[Request]:
        policy, sched = program_policy(small_preset, open_below=0.0, engage_at=0.0)
        capacity = policy.budget_tokens / policy.target_utilization
        policy.target_utilization = 1_200 / capacity  # room for two programs of ≤ 1,000 tokens
        if limit is not None:
            policy.limit_context(limit)
        for rid in (1, 2):
            sched.add_request(serving_turn(rid, session=f"s{rid}", step=0, prompt=100))
        return list(sched.admissible(10))

    policy, _ = program_policy(small_preset)
    turn = serving_turn(1, session="s1", step=0, prompt=100)
    assert policy.predicted_peak(turn) == 100 + 8 * 1_500
    policy.limit_context(1_000)
    assert policy.predicted_peak(turn) == 1_000
    assert policy.footprint_term(turn) == (100 + 1_000) / 2
    assert len(gate(None)) == 1  # the prior's 12k-token peak: only the idle rule admits
    assert len(gate(1_000)) == 2
    with pytest.raises(ValueError, match="context limit"):
        policy.limit_context(0)


def test_the_engines_longest_context_reaches_the_policy_through_the_preset(
    small_preset: Preset,
) -> None:
    """Both engines cap predicted growth at the engine's max_model_len: the scheduler passes the
    preset's on (the vLLM plug-in sets it from vLLM's; validate sets the simulator's)."""
    limited = small_preset.with_overrides({"max_model_len": 1_000})
    policy = make_policy("program", predictor=make_predictor("oracle"), preset=limited)
    Scheduler(preset=limited, policy=policy)
    turn = serving_turn(1, session="s1", step=0, prompt=100)
    assert policy.predicted_peak(turn) == 1_000
    unlimited = make_policy("program", predictor=make_predictor("oracle"), preset=small_preset)
    Scheduler(preset=small_preset, policy=unlimited)
    assert unlimited.predicted_peak(turn) == 100 + 8 * 1_500
    with pytest.raises(Exception, match="max_model_len"):
        small_preset.with_overrides({"max_model_len": 0})


def test_the_program_rules_engage_only_under_a_sustained_kv_load(small_preset: Preset) -> None:
    policy, sched = program_policy(small_preset, engage_at=0.5, load_window_s=10.0)
    assert policy.admission_gate() is None and not policy.engaged  # an idle engine: open
    quiet = sim_request(1)
    sched.add_request(quiet)  # LAMPS-aging's order: one class, entered + aging_s · ln(area)
    assert quiet.queue_key[0] == ADMITTED
    memory = sched.memory
    memory.allocate(int(0.6 * memory.num_gpu_blocks))  # 60 % of the KV in use from now on
    sched.set_time(1.0)
    policy.admission_gate()
    assert not policy.engaged and policy.load < 0.1  # a spike is not a load
    sched.set_time(30.0)  # three windows at 60 %: the time average passes 0.5
    assert policy.admission_gate() is not None and policy.engaged
    newcomer = sim_request(2)
    sched.add_request(newcomer)
    assert newcomer.queue_key[0] == NEW  # the program classes apply
    memory.free(int(0.6 * memory.num_gpu_blocks))
    sched.set_time(32.0)
    policy.admission_gate()
    assert policy.engaged  # hysteresis: still above 0.8 x 0.5
    sched.set_time(60.0)
    assert policy.admission_gate() is None and not policy.engaged
    assert policy.engagements == 1


def test_below_the_engage_level_the_policy_schedules_as_lamps_aging(small_preset: Preset) -> None:
    programs = [make_program(f"p{i}", [(40, 0.5, 200)] * 4, agent="x") for i in range(30)]
    arrivals = poisson_workload(programs, qps=0.5, seed=3)
    results = {}
    for name in ("program", "lamps-aging"):
        policy = make_policy(name, predictor=make_predictor("oracle"), preset=small_preset)
        results[name] = Simulator(preset=small_preset, policy=policy, arrivals=arrivals).run(
            RunLabels(policy=name, predictor="oracle")
        )
    prog, lamps = results["program"], results["lamps-aging"]
    assert [r.e2e for r in prog.requests] == [r.e2e for r in lamps.requests]
    assert [r.ttft for r in prog.requests] == [r.ttft for r in lamps.requests]


def _swapped_turn(sched: Scheduler, *, tool_s: float) -> Request:
    """A turn that ran, called a ``tool_s`` tool and had its KV swapped to host memory."""
    program = make_program("p1", [(50, tool_s, 10), (50, 0.0, 0)], prompt=300)
    req = Request(request_id=1, program=program, arrival_time=0.0)
    sched.add_request(req)
    sched.admit(req)
    req.move_to(RequestState.DECODING)
    req.kv_tokens = 350
    req.gpu_blocks = sched.memory.blocks_for(350)
    sched.memory.allocate(req.gpu_blocks)
    outcome = Outcome(output_tokens=50, tool="tool", tool_duration=tool_s, returned_tokens=10)
    assert sched.end_turn(req, outcome, continues=True, override=KVStrategy.SWAP) is (
        KVStrategy.SWAP
    )
    assert req.state is RequestState.PAUSED_SWAPPED and req.host_blocks > 0
    return req


def test_an_engine_with_its_own_host_store_releases_the_cores_copy(small_preset: Preset) -> None:
    _, sched = program_policy(small_preset, engage_at=0.0)
    req = _swapped_turn(sched, tool_s=10.0)
    sched.release_host_copy(req)  # what the vLLM plug-in does after a swap decision
    assert sched.memory.free_host_blocks == sched.memory.num_host_blocks
    assert req.state is RequestState.PAUSED_DISCARDED


def _end(sched: Scheduler, turn: Request, *, tool: bool, session: str) -> None:
    """The plug-in's report of a turn's end: a pause into a tool, or the session's last turn."""
    outcome = Outcome(
        output_tokens=50, tool="tool" if tool else None, tool_duration=1.0, returned_tokens=0
    )
    sched.end_turn(turn, outcome, continues=tool, key=session, gap=1.0 if tool else None)


def test_the_committed_figures_return_to_zero_when_every_program_has_left(
    small_preset: Preset,
) -> None:
    # Issue 22: after a real-engine run, state() showed committed_resident_tokens of 1,868 and
    # 2,963 with nothing in flight.  It was the gate's last look, kept: the gate is consulted
    # only while requests wait, so the figure stayed at what it counted then; and an aborted
    # turn's program stayed in flight (and counted) for stale_s.  Driven as the plug-in does.
    policy, sched = program_policy(small_preset, engage_at=0.0)
    turns = {s: serving_turn(i, session=s, step=0, prompt=500) for i, s in enumerate("abc", 1)}
    for turn in turns.values():
        sched.add_request(turn)
        sched.admit(turn)
    assert set(policy.in_flight) == {"a", "b", "c"} and policy.resident_commitment() > 0
    _end(sched, turns["a"], tool=True, session="a")  # a pauses; its next turn comes back
    later = serving_turn(4, session="a", step=1, prompt=550, final=True)
    sched.add_request(later, resumed=True)
    sched.sync_view()
    assert list(sched.admissible(10)) == [later]  # the gate's look, with programs in flight
    sched.admit(later)
    _end(sched, later, tool=False, session="a")
    _end(sched, turns["b"], tool=False, session="b")
    sched.abort(turns["c"])  # the client went away mid-turn: no end is reported
    state = policy.state()
    assert state["in_flight"] == 0 and state["in_flight_in_tool"] == 0
    assert state["committed_tokens"] == 0.0
    assert state["committed_resident_tokens"] == 0.0
    assert state["admissions"] == 3  # a, b and c; a's later turn was not a new program
    assert policy.footprints._agents["coder"].growth_n == 2  # a and b finished; c taught nothing


def test_an_aborted_turn_frees_its_programs_place_at_the_next_look(small_preset: Preset) -> None:
    # A budget of about one program: while an aborted program counted, the gate stayed shut.
    policy, sched = program_policy(
        small_preset, target_utilization=0.15, open_below=0.0, engage_at=0.0
    )
    first = serving_turn(1, session="s1", step=0, prompt=2000)
    second = serving_turn(2, session="s2", step=0, prompt=2000)
    sched.add_request(first)
    sched.add_request(second)
    assert list(sched.admissible(10)) == [first]
    sched.admit(first)
    sched.sync_view()
    assert list(sched.admissible(10)) == []
    sched.abort(first)
    sched.sync_view()
    assert list(sched.admissible(10)) == [second]
    assert set(policy.in_flight) == set()  # s2 enters when admitted


def test_a_preempted_turn_is_not_taken_for_an_aborted_one(small_preset: Preset) -> None:
    policy, sched = program_policy(small_preset, engage_at=0.0)
    first = serving_turn(1, session="s1", step=0, prompt=500)
    sched.add_request(first)
    sched.admit(first)
    sched.preempt(first)  # leaves the GPU and goes back to wait: its program stays in flight
    sched.admission_gate()
    assert set(policy.in_flight) == {"s1"} and policy.state()["in_flight"] == 1


def test_a_sessions_earlier_turn_aborted_beside_its_current_one_keeps_the_program(
    small_preset: Preset,
) -> None:
    # A client that ran two turns of one session side by side and dropped the earlier one: the
    # program goes on with the later turn, so it stays in flight.
    policy, sched = program_policy(small_preset, engage_at=0.0)
    earlier = serving_turn(1, session="s1", step=0, prompt=500)
    sched.add_request(earlier)
    sched.admit(earlier)
    later = serving_turn(2, session="s1", step=1, prompt=600)
    sched.add_request(later, resumed=True)
    sched.admit(later)
    sched.abort(earlier)
    assert policy.state()["in_flight"] == 1
    sched.abort(later)
    assert policy.state()["in_flight"] == 0 and policy.state()["committed_tokens"] == 0.0


def test_the_figures_return_to_zero_when_a_sessions_turns_continue_one_request(
    small_preset: Preset,
) -> None:
    # The plug-in's other path: a session's next turn is its paused turn's tool return
    # (Scheduler.tool_returned), the same core request going on.
    policy, sched = program_policy(small_preset, engage_at=0.0)
    done, dropped = (
        serving_turn(i, session=s, step=0, prompt=500) for i, s in ((1, "a"), (2, "b"))
    )
    for turn in (done, dropped):
        sched.add_request(turn)
        sched.admit(turn)
        _end(sched, turn, tool=True, session=turn.program.session_id or "")
        back = Outcome(output_tokens=50, tool="tool", tool_duration=1.0, returned_tokens=10)
        sched.tool_returned(turn, back, key=turn.program.session_id)
        sched.sync_view()
        assert turn in list(sched.admissible(10))
        sched.admit(turn)
    _end(sched, done, tool=False, session="a")
    sched.abort(dropped)  # mid-turn
    state = policy.state()
    assert state["in_flight"] == 0 and state["committed_tokens"] == 0.0
    assert state["committed_resident_tokens"] == 0.0 and state["admissions"] == 2


def test_a_turn_aborted_while_it_waits_ends_its_program_at_once(small_preset: Preset) -> None:
    """A session's next turn aborted in the queue never left the GPU, so on_leave cannot tell;
    the core's abort does (Policy.on_abort): the program is no longer in flight or counted."""
    policy, sched = program_policy(small_preset, engage_at=0.0)
    first = serving_turn(1, session="s1", step=0, prompt=500)
    sched.add_request(first)
    sched.admit(first)
    _end(sched, first, tool=True, session="s1")
    later = serving_turn(2, session="s1", step=1, prompt=550, final=True)
    sched.add_request(later, resumed=True)  # waits; the client goes away before it runs
    assert policy.state()["in_flight"] == 1
    sched.abort(later)
    state = policy.state()
    assert state["in_flight"] == 0 and state["committed_tokens"] == 0.0
