"""The simulator models stock vLLM and the papers' systems faithfully (issue 10, "Fidelity"):
prefix caching, copy cost, INFERCEPT's swap rules, tool returns through admission, prefill
attention, and LAMPS' starvation rules."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lamps_agent.cost_model import CostModel
from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies import InferceptPolicy, LampsPolicy, make_policy
from lamps_agent.policies.base import EngineView, Policy
from lamps_agent.predictors import make_predictor
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import PausedKV, Scheduler, SchedulerOutput
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.strategy import strategy_wastes
from lamps_agent.waste import EngineLoad, discard_waste, discard_waste_array
from lamps_agent.workloads import Arrival
from tests.core.conftest import make_program

ORACLE = make_predictor("oracle")


def _outcome(req: Request) -> Outcome:
    seg = req.segment
    return Outcome(
        output_tokens=seg.output_tokens,
        tool=seg.tool,
        tool_duration=seg.tool_duration,
        returned_tokens=seg.returned_tokens,
    )


def _step(sched: Scheduler, dt: float = 0.01) -> list[Request]:
    """One iteration at a fixed step time; returns the requests whose turn ended."""
    out = sched.schedule()
    sched.set_time(sched.now + dt)
    return [end.request for end in sched.update_from_output(out, step_time=dt)]


def _run_until_paused(sched: Scheduler, req: Request) -> None:
    for _ in range(10_000):
        if req in _step(sched):
            assert req.is_paused
            return
    raise AssertionError("the turn never ended")


class _Preserve(Policy):
    """FCFS by original arrival; keeps every paused turn's KV on the GPU."""

    name = "test-preserve"

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.PRESERVE


class _Swap(Policy):
    name = "test-swap"

    def on_pause(self, paused: PausedKV) -> KVStrategy:
        return KVStrategy.SWAP


# -- 1. prefix cache ----------------------------------------------------------------------------
def test_freed_prefix_is_free_but_reusable_and_evicted_lru_from_its_end() -> None:
    memory = KVMemory(num_gpu_blocks=20, num_host_blocks=0, block_size=16, prefix_caching=True)
    memory.allocate(10)
    memory.free(5, owner="a", cached=4)  # 4 full blocks and a partial one
    memory.free(5, owner="b", cached=5)
    assert memory.free_gpu_blocks == 20 and memory.cached_gpu_blocks == 9
    # Never-used blocks go first (10 of them), then a's partial block, then a's last blocks.
    memory.allocate(13)
    assert memory.cached_blocks("a") == 2 and memory.cached_blocks("b") == 5
    assert memory.evicted_blocks == 2
    assert memory.take_cached("b", 3) == 3  # only what the next prompt can use
    assert memory.cached_blocks("b") == 0 and memory.free_gpu_blocks == 4
    assert memory.cached_gpu_blocks == 2


def test_without_prefix_caching_nothing_is_cached() -> None:
    memory = KVMemory(num_gpu_blocks=20, num_host_blocks=0, block_size=16)
    memory.allocate(5)
    memory.free(5, owner="a", cached=5)
    assert memory.cached_blocks("a") == 0 and memory.free_gpu_blocks == 20


def test_a_discard_whose_blocks_were_evicted_recomputes_them(small_preset: Preset) -> None:
    """A second program's prefill evicts the paused one's cached prefix: only what survived is
    reused, the rest is recomputed."""
    preset = small_preset  # 3 GB: 408 blocks
    paused = make_program("p", [(10, 2.0, 5), (10, 0, 0)], prompt=3000)
    filler = make_program("f", [(10, 0, 0)], prompt=5000)
    policy = make_policy("vllm", predictor=ORACLE, preset=preset)
    sim = Simulator(
        preset=preset, policy=policy, arrivals=[Arrival(0.0, paused), Arrival(1.0, filler)]
    )
    result = sim.run(RunLabels(policy="vllm", predictor="oracle"))
    s = result.summary
    assert 0 < s.prefix_hit_tokens < 3008  # part of the 188 full blocks survived the filler
    assert s.prefix_hit_tokens + s.recomputed_tokens == 3010
    assert sim.scheduler.memory.evicted_blocks > 0


# -- 2. copies overlap compute or serialise with it ----------------------------------------------
@pytest.mark.parametrize("overlap", [True, False])
def test_step_time_overlaps_or_serialises_copies(small_preset: Preset, overlap: bool) -> None:
    # Attention off: the step's compute is then the linear terms alone.
    cost = dataclasses.replace(
        small_preset.cost, copy_overlaps_compute=overlap, prefill_attn_ms_per_mtok2=0.0
    )
    preset = dataclasses.replace(small_preset, cost=cost)
    sim = Simulator(
        preset=preset, policy=make_policy("vllm", predictor=ORACLE, preset=preset), arrivals=[]
    )
    req = Request(request_id=0, program=make_program("p", [(5, 0, 0)]), arrival_time=0.0)
    out = SchedulerOutput(prefills=[(req, 100)], swap_in_tokens=4000)
    dt, compute = sim._execute(out)
    copy = cost.swap_time(4000 * preset.kv_bytes_per_token)
    assert compute == pytest.approx(cost.iteration_time(100, 0, 0))
    assert dt == pytest.approx(max(compute, copy) if overlap else compute + copy)


def test_a_step_that_only_copies_out_is_executed_not_dropped() -> None:
    assert not SchedulerOutput(swap_out_tokens=512).is_empty
    assert SchedulerOutput().is_empty


def test_swap_ins_share_a_per_step_copy_budget(small_preset: Preset) -> None:
    """Two swapped turns come back at once: the host link moves one per step (the first always
    goes), not both in one step."""
    preset = dataclasses.replace(small_preset, host_swap_gb=4.0)
    sched = Scheduler(preset=preset, policy=_Swap(predictor=ORACLE, preset=preset))
    reqs = [
        Request(
            request_id=i,
            program=make_program(f"p{i}", [(4, 1.0, 2), (4, 0, 0)], prompt=1500),
            arrival_time=0.0,
        )
        for i in range(2)
    ]
    for req in reqs:
        sched.add_request(req)
    for req in reqs:
        _run_until_paused(sched, req)
    for req in reqs:
        sched.tool_returned(req, _outcome(req))
    # 10 ms compute moves 10e-3 × 20e9 / 458,752 ≈ 436 tokens: less than one context.
    out = sched.schedule()
    assert out.swap_in_tokens == reqs[0].kv_tokens
    assert reqs[1] in sched.waiting


# -- 3. INFERCEPT as built -------------------------------------------------------------------------
def _infercept(preset: Preset, *, compute: float, step: float) -> InferceptPolicy:
    policy = InferceptPolicy(predictor=ORACLE, preset=preset)
    memory = KVMemory(
        num_gpu_blocks=preset.num_gpu_blocks,
        num_host_blocks=preset.num_host_blocks,
        block_size=preset.block_size,
    )
    view = EngineView(preset=preset, memory=memory, running_tokens=20_000, batch_query_tokens=100)
    view.last_compute_time = compute
    view.last_iteration_time = step
    policy.bind(view)
    return policy


def _paused(tokens: int, remaining: float) -> PausedKV:
    return PausedKV(
        key=tokens,
        tokens=tokens,
        blocks=-(-tokens // 16),
        paused_at=0.0,
        predicted_return=remaining,
    )


def test_infercept_swap_budget_comes_from_compute_time_not_the_step(small_preset: Preset) -> None:
    preset = dataclasses.replace(small_preset, host_swap_gb=8.0)
    # A copy-bound step of 1 s whose compute took 10 ms: about 436 tokens hide behind compute.
    policy = _infercept(preset, compute=0.010, step=1.0)
    decisions = dict(policy.adjust_paused([_paused(1000, 100.0)]))
    assert all(s is not KVStrategy.SWAP for s in decisions.values())
    policy = _infercept(preset, compute=0.050, step=0.050)  # 2180 tokens hide: it swaps
    assert [s for _, s in policy.adjust_paused([_paused(1000, 100.0)])] == [KVStrategy.SWAP]


def test_infercept_does_not_swap_a_call_shorter_than_the_round_trip(small_preset: Preset) -> None:
    preset = dataclasses.replace(small_preset, host_swap_gb=8.0)
    policy = _infercept(preset, compute=1.0, step=1.0)
    # 400 tokens: 9.2 ms each way; the tool returns in 5 ms.
    decisions = policy.adjust_paused([_paused(400, 0.005)])
    assert all(s is not KVStrategy.SWAP for _, s in decisions)
    assert [s for _, s in policy.adjust_paused([_paused(400, 1.0)])] == [KVStrategy.SWAP]


# -- 4. tool returns go through admission; pins released by the policy's choice -----------------
def test_preserved_turn_returning_waits_for_a_seat(small_preset: Preset) -> None:
    preset = dataclasses.replace(small_preset, max_num_seqs=1)
    sched = Scheduler(preset=preset, policy=_Preserve(predictor=ORACLE, preset=preset))
    a = Request(request_id=0, program=make_program("a", [(4, 0.5, 2), (4, 0, 0)]), arrival_time=0.0)
    b = Request(request_id=1, program=make_program("b", [(500, 0, 0)]), arrival_time=0.1)
    sched.add_request(a)
    _run_until_paused(sched, a)
    sched.add_request(b)
    _step(sched)
    assert sched.running == [b]
    sched.tool_returned(a, _outcome(a))
    assert a not in sched.running and a in sched.waiting
    _step(sched)
    assert sched.running == [b] and a.gpu_blocks > 0  # no seat: waits, KV still pinned
    while b.state is not RequestState.FINISHED:
        _step(sched)
    _step(sched)
    # its KV was kept; as in vLLM, the next turn finds it by prefix, whole 16-token blocks only,
    # and its last sampled token never had KV: 200 + 4 seen, 192 found
    assert a in sched.running and a.recomputed_tokens == 204 - 192


def test_swapped_turn_returning_takes_its_place_in_the_policy_order(small_preset: Preset) -> None:
    preset = dataclasses.replace(small_preset, max_num_seqs=1, host_swap_gb=4.0)
    sched = Scheduler(preset=preset, policy=_Swap(predictor=ORACLE, preset=preset))
    a = Request(request_id=0, program=make_program("a", [(4, 0.5, 2), (4, 0, 0)]), arrival_time=0.0)
    b = Request(request_id=1, program=make_program("b", [(50, 0, 0)]), arrival_time=0.5)
    c = Request(request_id=2, program=make_program("c", [(4, 0, 0)]), arrival_time=-1.0)
    sched.add_request(a)
    _run_until_paused(sched, a)
    assert a.state is RequestState.PAUSED_SWAPPED
    sched.add_request(b)
    _step(sched)
    sched.add_request(c)  # arrived before a (by its key): goes first once b leaves
    sched.tool_returned(a, _outcome(a))
    admitted = []
    while len(admitted) < 2:
        _step(sched)
        admitted += [r for r in sched.running if r in (a, c) and r not in admitted]
    assert admitted == [c, a]


def test_admission_releases_pins_rather_than_block_on_them(small_preset: Preset) -> None:
    sched = Scheduler(preset=small_preset, policy=_Preserve(predictor=ORACLE, preset=small_preset))
    a = Request(
        request_id=0,
        program=make_program("a", [(4, 60.0, 2), (4, 0, 0)], prompt=5500),
        arrival_time=0.0,
    )
    sched.add_request(a)
    _run_until_paused(sched, a)
    assert a.state is RequestState.PAUSED_PRESERVED
    b = Request(request_id=1, program=make_program("b", [(4, 0, 0)], prompt=3000), arrival_time=1.0)
    sched.add_request(b)  # a 2048-token chunk does not fit beside a's 345 blocks of 408
    _step(sched)
    assert b in sched.running
    assert a.state is RequestState.PAUSED_DISCARDED and sched.counters.pins_released == 1


@pytest.mark.parametrize("pin_swap", [True, False])
def test_pin_released_under_pressure_is_swapped_when_that_wastes_less(
    small_preset: Preset, pin_swap: bool
) -> None:
    """On an engine that can copy pinned KV out (INFERCEPT's); on one that cannot (vLLM with the
    plug-in, the default) the same decision is a discard, counted."""
    cost = dataclasses.replace(small_preset.cost, swap_bytes_per_s=200e9)
    preset = dataclasses.replace(small_preset, cost=cost, host_swap_gb=4.0, pin_swap=pin_swap)

    class PinningLamps(LampsPolicy):
        def on_pause(self, paused: PausedKV) -> KVStrategy:
            return KVStrategy.PRESERVE

    sched = Scheduler(preset=preset, policy=PinningLamps(predictor=ORACLE, preset=preset))
    a = Request(
        request_id=0,
        program=make_program("a", [(4, 60.0, 2), (4, 0, 0)], prompt=5500),
        arrival_time=0.0,
    )
    sched.add_request(a)
    _run_until_paused(sched, a)
    b = Request(request_id=1, program=make_program("b", [(4, 0, 0)], prompt=3000), arrival_time=1.0)
    sched.add_request(b)
    context = a.kv_tokens
    out = sched.schedule()
    if pin_swap:
        assert a.state is RequestState.PAUSED_SWAPPED and a.recomputed_tokens == 0
        assert out.swap_out_tokens == a.kv_tokens
        assert sched.counters.pin_swaps_discarded == 0
    else:
        assert a.state is RequestState.PAUSED_DISCARDED and a.kv_tokens == 0 < context
        assert a.seen_tokens > context  # its next prefill counts all of it as recomputed
        assert out.swap_out_tokens == 0 and sched.counters.pin_swaps_discarded == 1


# -- 5. prefill attention over the existing context; the engine's real token budget -------------
def test_iteration_and_prefill_time_charge_attention_over_the_context() -> None:
    cost = CostModel(
        base_ms=10.0,
        prefill_ms_per_token=0.05,
        decode_ms_per_seq=0.05,
        prefill_attn_ms_per_mtok2=2.0,
    )
    products = 1000 * (8000 + 500)
    assert cost.iteration_time(1000, 0, 0, products) == pytest.approx(
        (10.0 + 50.0 + 2.0 * products / 1e6) / 1000
    )
    # 4096 tokens after 8000 in chunks of 2048: Σ chunk·(before + chunk/2) = 4096·(8000 + 2048).
    expected = 2 * 10.0 + 0.05 * 4096 + 2.0 * 4096 * (8000 + 2048) / 1e6
    assert cost.prefill_time(4096, 2048, 8000) == pytest.approx(expected / 1000)


def test_simulated_prefill_pays_attention_over_its_context(small_preset: Preset) -> None:
    cost = dataclasses.replace(small_preset.cost, prefill_attn_ms_per_mtok2=1.0)
    preset = dataclasses.replace(small_preset, cost=cost)
    sim = Simulator(
        preset=preset, policy=make_policy("vllm", predictor=ORACLE, preset=preset), arrivals=[]
    )
    req = Request(
        request_id=0, program=make_program("p", [(5, 0, 0)], prompt=3000), arrival_time=0.0
    )
    req.kv_tokens = 1000
    _, compute = sim._execute(SchedulerOutput(prefills=[(req, 2000)]))
    assert compute == pytest.approx(cost.iteration_time(2000, 0, 1000, 2000 * (1000 + 1000)))
    assert compute > small_preset.cost.iteration_time(2000, 0, 1000)


def test_discard_waste_recomputes_in_the_engines_token_budget(small_preset: Preset) -> None:
    load = EngineLoad(running_tokens=10_000, batch_query_tokens=200)
    wastes = strategy_wastes(
        context_tokens=5000, tool_duration=10.0, preset=small_preset, load=load
    )
    budget = small_preset.token_budget
    assert budget != small_preset.saturation_tokens
    assert wastes[KVStrategy.DISCARD] == pytest.approx(
        discard_waste(5000, load, small_preset.cost, budget)
    )
    assert wastes[KVStrategy.DISCARD] != pytest.approx(
        discard_waste(5000, load, small_preset.cost, small_preset.saturation_tokens)
    )


def test_discard_waste_attention_term_by_hand() -> None:
    m = 3.0
    cost = CostModel(
        base_ms=10.0, prefill_ms_per_token=0.05, decode_ms_per_seq=0.05, prefill_attn_ms_per_mtok2=m
    )
    plain = dataclasses.replace(cost, prefill_attn_ms_per_mtok2=0.0)
    load = EngineLoad(running_tokens=1000, batch_query_tokens=48)
    # C = 5000 in chunks of 2000: full chunks k=1,2 then r = 1000.
    c, R = 2000.0, 1000.0
    attn = sum(m * 1e-9 * c * ((k - 1) * c + c / 2) * (k * c + R) for k in (1, 2))
    attn += m * 1e-9 * 1000 * (2 * c + 500) * (R + 1000)
    got = discard_waste(5000, load, cost, 2048) - discard_waste(5000, load, plain, 2048)
    assert got == pytest.approx(attn, rel=1e-9)
    contexts = [0.0, 100.0, 2000.0, 5000.0, 12345.0]
    vector = discard_waste_array(contexts, load, cost, 2048)  # type: ignore[arg-type]
    for ctx, w in zip(contexts, vector, strict=True):
        assert w == pytest.approx(discard_waste(ctx, load, cost, 2048))


# -- 6. LAMPS' starvation: the paper's counter, and aging -----------------------------------------
def test_aging_bound_on_who_may_pass(small_preset: Preset) -> None:
    policy = make_policy("lamps-aging", predictor=ORACLE, preset=small_preset, aging_s=10.0)
    assert isinstance(policy, LampsPolicy) and policy.starvation_threshold is None
    memory = KVMemory(num_gpu_blocks=10, num_host_blocks=0, block_size=16)
    view = EngineView(preset=small_preset, memory=memory)
    policy.bind(view)
    program = make_program("p", [(5, 0, 0)])
    big = Request(request_id=0, program=program, arrival_time=0.0)
    big.policy_rank = math.exp(5.0)  # passed only by those entering within 10·ln(e^5/1) = 50 s
    key_big = policy.queue_key(big, resumed=False)
    small = Request(request_id=1, program=program, arrival_time=0.0)
    small.policy_rank = 1.0
    view.now = 49.9
    assert policy.queue_key(small, resumed=False) < key_big
    view.now = 50.1
    assert policy.queue_key(small, resumed=False) > key_big


def test_the_aging_time_is_one_measured_turn_cycle(small_preset: Preset) -> None:
    """``lamps-aging`` ages by one turn's cycle (decode alone and tool) as the engine measures
    it, so the bound means the same at any time scale; 10 s before a tool has returned; the
    option replaces it."""
    program = make_program("p", [(5, 2.0, 0), (5, 0, 0)])
    windows = {}
    for scale in (1.0, 0.05):  # the simulator's time, and a replay's at 1/20
        policy = make_policy("lamps-aging", predictor=ORACLE, preset=small_preset)
        assert isinstance(policy, LampsPolicy)
        memory = KVMemory(num_gpu_blocks=10, num_host_blocks=0, block_size=16)
        policy.bind(EngineView(preset=small_preset, memory=memory))
        assert policy.aging_window() == 10.0  # the prior
        req = Request(request_id=0, program=program, arrival_time=0.0)
        for tool_s in (1.0, 2.0, 30.0):
            policy.on_turn_end(
                req,
                Outcome(output_tokens=5, tool="t", tool_duration=tool_s * scale, returned_tokens=0),
            )
        decode = policy.turn_service_s(
            req, Outcome(output_tokens=5, tool="t", tool_duration=0.0, returned_tokens=0)
        )
        assert policy.aging_window() == pytest.approx(2.0 * scale + decode)  # the median
        windows[scale] = policy.aging_window() - decode
    assert windows[0.05] == pytest.approx(windows[1.0] / 20)
    fixed = make_policy("lamps-aging", predictor=ORACLE, preset=small_preset, aging_s=4.0)
    assert isinstance(fixed, LampsPolicy)
    memory = KVMemory(num_gpu_blocks=10, num_host_blocks=0, block_size=16)
    fixed.bind(EngineView(preset=small_preset, memory=memory))
    fixed.on_turn_end(
        Request(request_id=0, program=program, arrival_time=0.0),
        Outcome(output_tokens=5, tool="t", tool_duration=2, returned_tokens=0),
    )
    assert fixed.aging_window() == 4.0


def test_lamps_keeps_the_papers_counter_and_rejects_unknown_rules(small_preset: Preset) -> None:
    policy = make_policy("lamps", predictor=ORACLE, preset=small_preset)
    assert isinstance(policy, LampsPolicy)
    assert policy.starvation == "counter" and policy.starvation_threshold == 100
    aged = make_policy("lamps", predictor=ORACLE, preset=small_preset, starvation="aging")
    assert aged.starvation_threshold is None
    with pytest.raises(ValueError, match="starvation must be one of counter, aging"):
        make_policy("lamps", predictor=ORACLE, preset=small_preset, starvation="lottery")


def test_starved_admissions_are_counted(small_preset: Preset) -> None:
    long = make_program("long", [(1500, 0, 0)], prompt=3000)
    shorts = [make_program(f"s{i}", [(40, 0, 0)], prompt=800) for i in range(300)]
    arrivals = [Arrival(0.0, shorts[0]), Arrival(0.001, long)]
    arrivals += [Arrival(0.002 + 0.01 * i, p) for i, p in enumerate(shorts[1:])]
    counts = {}
    for name in ("lamps", "lamps-aging"):
        policy = make_policy(name, predictor=ORACLE, preset=small_preset)
        result = Simulator(preset=small_preset, policy=policy, arrivals=arrivals).run(
            RunLabels(policy=name, predictor="oracle")
        )
        assert result.summary.admissions >= len(arrivals)
        counts[name] = result.summary.starved_admissions
    assert counts["lamps"] > 0 and counts["lamps-aging"] == 0
