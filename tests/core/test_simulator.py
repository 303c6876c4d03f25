"""Invariants of the simulator under every policy, determinism, and LAMPS' starvation bound."""

from __future__ import annotations

import dataclasses
import heapq
import itertools

import pytest

from lamps_agent.errors import UnknownNameError
from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies import POLICIES, LampsPolicy, make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import PausedKV
from lamps_agent.sim import RunLabels, Simulator, StepStatus
from lamps_agent.workloads import Arrival, generate_programs, load_trace, poisson_workload
from tests.core.conftest import make_program

ALL_POLICIES = POLICIES.names()


class CheckedMemory(KVMemory):
    """Asserts the capacity invariant on every allocation."""

    def allocate(self, blocks: int) -> None:
        super().allocate(blocks)
        assert 0 <= self.free_gpu_blocks <= self.num_gpu_blocks
        assert 0 <= self.free_host_blocks <= self.num_host_blocks
        if self.prefix_caching:  # the LRU pool holds exactly the free blocks
            assert sum(run.blocks for run in self._lru) == self.free_gpu_blocks
            assert 0 <= self.cached_gpu_blocks <= self.free_gpu_blocks


def _simulate(
    preset: Preset, policy_name: str, arrivals: list[Arrival], predictor: str = "oracle", **opts
):  # type: ignore[no-untyped-def]
    policy = make_policy(
        policy_name, predictor=make_predictor(predictor, seed=1), preset=preset, **opts
    )
    sim = Simulator(preset=preset, policy=policy, arrivals=arrivals, record_timeline=True)
    checked = CheckedMemory(
        num_gpu_blocks=preset.num_gpu_blocks,
        num_host_blocks=preset.num_host_blocks,
        block_size=preset.block_size,
        prefix_caching=policy.prefix_caching,
    )
    sim.scheduler.memory = sim.scheduler.view.memory = checked
    result = sim.run(RunLabels(policy=policy_name, predictor=predictor))
    return sim, result


@pytest.fixture(scope="module")
def pressure_workload() -> list[Arrival]:
    fits = [p for p in generate_programs(160, seed=5) if p.segments[-1].prompt_tokens < 4000]
    return poisson_workload(fits[:120], qps=8.0, seed=5)


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_every_request_finishes_within_capacity_and_no_block_leaks(
    policy: str, small_preset: Preset, pressure_workload: list[Arrival]
) -> None:
    # The program policy's gate keeps this workload under half the KV (its prior footprint is
    # about the whole small cache): opened wide, its pins, TTLs and preemptions meet the pressure.
    opts = {"target_utilization": 4.0, "open_below": 1.0} if policy == "program" else {}
    sim, result = _simulate(small_preset, policy, pressure_workload, **opts)
    s = result.summary
    assert s.num_requests == len(pressure_workload) and s.rejected == 0
    assert all(r.state is RequestState.FINISHED for r in sim._done)
    assert s.peak_kv_blocks <= small_preset.num_gpu_blocks
    assert s.peak_kv_fraction > 0.9  # the workload really presses on memory
    memory = sim.scheduler.memory
    assert memory.free_gpu_blocks == memory.num_gpu_blocks  # nothing leaked
    assert memory.free_host_blocks == memory.num_host_blocks
    sched = sim.scheduler
    assert not sched.running and not sched.paused and not sched.waiting
    assert (
        result.timeline is not None
        and max(result.timeline.used_blocks) <= small_preset.num_gpu_blocks
    )
    for m in result.requests:
        assert m.ttft > 0 and m.e2e >= m.tool_time and m.e2e >= m.ttft


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_same_seed_gives_identical_metrics(
    policy: str, small_preset: Preset, pressure_workload: list[Arrival]
) -> None:
    _, a = _simulate(small_preset, policy, pressure_workload, predictor="noisy:30")
    _, b = _simulate(small_preset, policy, pressure_workload, predictor="noisy:30")
    assert a.summary == b.summary
    assert a.requests == b.requests


def test_different_seeds_differ(small_preset: Preset) -> None:
    programs = generate_programs(60, seed=5)
    _, a = _simulate(small_preset, "lamps", poisson_workload(programs, qps=6, seed=1))
    _, b = _simulate(small_preset, "lamps", poisson_workload(programs, qps=6, seed=2))
    assert a.summary.e2e.mean != b.summary.e2e.mean


def test_vllm_nocache_discards_at_every_tool_call_and_recomputes_the_context(
    small_preset: Preset,
) -> None:
    big = dataclasses.replace(small_preset, gpu_kv_gb=40.0)
    program = make_program("p", [(10, 1.0, 5), (10, 1.0, 5), (10, 0, 0)], prompt=300)
    _, result = _simulate(big, "vllm-nocache", [Arrival(0.0, program)])
    # contexts lost at the two pauses: 300+10 and 315+10
    assert result.summary.recomputed_tokens == 310 + 325
    assert result.summary.swapped_bytes == 0 and result.summary.prefix_hit_tokens == 0


def test_vllm_reuses_the_cached_prefix_after_a_tool_call(small_preset: Preset) -> None:
    big = dataclasses.replace(small_preset, gpu_kv_gb=40.0)
    program = make_program("p", [(10, 1.0, 5), (10, 1.0, 5), (10, 0, 0)], prompt=300)
    _, result = _simulate(big, "vllm", [Arrival(0.0, program)])
    # Full 16-token blocks survive in the idle engine's free pool: 304 of 310, 320 of 325.
    assert result.summary.prefix_hit_tokens == 304 + 320
    assert result.summary.recomputed_tokens == (310 - 304) + (325 - 320)


def test_lamps_preserves_short_calls_without_recompute(small_preset: Preset) -> None:
    big = dataclasses.replace(small_preset, gpu_kv_gb=40.0)
    program = make_program("p", [(10, 0.001, 5), (10, 0.001, 5), (10, 0, 0)], prompt=300)
    sim, result = _simulate(big, "lamps", [Arrival(0.0, program)])
    # a resumed turn finds its pinned KV by prefix, whole blocks only (as in vLLM), and the last
    # sampled token never had KV: 310 seen, 304 found; 325 seen, 320 found
    assert result.summary.recomputed_tokens == (310 - 304) + (325 - 320)
    assert result.summary.swapped_bytes == 0
    assert RequestState.PAUSED_PRESERVED in sim._done[0].history
    assert result.summary.memory_waste_token_s == pytest.approx((309 + 324) * 0.001, rel=1e-6)


def test_swap_moves_bytes_and_avoids_recompute(small_preset: Preset) -> None:
    big = dataclasses.replace(small_preset, gpu_kv_gb=40.0, host_swap_gb=10.0)

    class AlwaysSwap(LampsPolicy):
        def on_pause(self, paused: PausedKV) -> KVStrategy:
            return KVStrategy.SWAP

    program = make_program("p", [(10, 5.0, 5), (10, 0, 0)], prompt=300)
    policy = AlwaysSwap(predictor=make_predictor("oracle"), preset=big)
    sim = Simulator(preset=big, policy=policy, arrivals=[Arrival(0.0, program)])
    result = sim.run(RunLabels(policy="swap", predictor="oracle"))
    # 300 + 10 tokens, the last sampled without KV: 309 with KV, of which the swap store copies
    # the 19 full 16-token blocks; the partial block's 5 tokens and the last one are computed again
    assert result.summary.recomputed_tokens == 6
    assert result.summary.swapped_bytes == 2 * 304 * big.kv_bytes_per_token
    assert RequestState.RESUMING_SWAPPED in sim._done[0].history


@pytest.mark.parametrize("when", ["revisit", "pressure"])
def test_a_swap_the_host_cannot_take_falls_back_to_discard_and_is_counted(
    small_preset: Preset, when: str
) -> None:
    """A preserved turn the policy later swaps (on a revisit, or released under memory
    pressure) while the host tier is full is discarded instead: the run completes and the
    fallback is counted (the core used to raise OutOfBlocks from KVMemory.swap_out)."""
    tiny_host = dataclasses.replace(small_preset, gpu_kv_gb=0.5, host_swap_gb=0.001, pin_swap=True)

    class PreserveThenSwap(LampsPolicy):
        adjusts_paused = when == "revisit"

        def on_pause(self, paused: PausedKV) -> KVStrategy:
            return KVStrategy.PRESERVE

        def pin_ttl(self, paused: PausedKV) -> float | None:
            return 1e9  # only the revisit or memory pressure may release it

        def adjust_paused(self, preserved):  # type: ignore[no-untyped-def]
            return [(p, KVStrategy.SWAP) for p in preserved]

        def release_strategy(self, paused: PausedKV) -> KVStrategy:
            return KVStrategy.SWAP

    # Long tools keep the pins in place while later programs need their blocks.
    programs = [make_program(f"p{i}", [(20, 30.0, 5), (20, 0, 0)], prompt=600) for i in range(12)]
    arrivals = [Arrival(0.5 * i, p) for i, p in enumerate(programs)]
    policy = PreserveThenSwap(predictor=make_predictor("oracle"), preset=tiny_host)
    assert tiny_host.num_host_blocks < 600 // tiny_host.block_size  # no context fits the host
    sim = Simulator(preset=tiny_host, policy=policy, arrivals=arrivals)
    result = sim.run(RunLabels(policy="preserve-then-swap", predictor="oracle"))
    assert len(result.requests) == len(programs)
    assert result.summary.swapped_bytes == 0
    assert sim.scheduler.counters.swap_fallbacks > 0
    assert sim.scheduler.memory.free_host_blocks == tiny_host.num_host_blocks


def test_e2e_includes_tool_time(small_preset: Preset) -> None:
    big = dataclasses.replace(small_preset, gpu_kv_gb=40.0)
    program = make_program("p", [(10, 3.0, 5), (10, 0, 0)], prompt=100)
    _, result = _simulate(big, "infercept", [Arrival(0.0, program)])
    (m,) = result.requests
    assert m.tool_time == 3.0 and 3.0 < m.e2e < 3.5
    assert m.normalized_latency == pytest.approx(m.e2e / 20)


def test_programs_larger_than_the_gpu_are_rejected_not_crashing(small_preset: Preset) -> None:
    huge = make_program("huge", [(10, 0, 0)], prompt=small_preset.gpu_kv_tokens + 10)
    ok = make_program("ok", [(10, 0, 0)], prompt=100)
    _, result = _simulate(small_preset, "lamps", [Arrival(0.0, huge), Arrival(0.1, ok)])
    assert result.summary.rejected == 1 and result.summary.num_requests == 1


class RecordingLamps(LampsPolicy):
    """Checks, at each admission, the starvation rule: nobody passes a starved request."""

    sim: Simulator
    violations: int = 0
    admitted_while_starved: int = 0

    def on_admit(self, req: Request) -> None:
        queue = self.sim.scheduler.waiting
        iteration = self.view.iteration
        if queue.is_starved(req, iteration):
            self.admitted_while_starved += 1
        elif any(queue.is_starved(r, iteration) for r in queue.ordered(iteration)):
            self.violations += 1


def test_lamps_starvation_bound_holds(small_preset: Preset) -> None:
    # A long job first, then a steady stream of short ones that LAMPS ranks ahead of it.
    long = make_program("long", [(1500, 0, 0)], prompt=3000)
    shorts = [make_program(f"s{i}", [(40, 0, 0)], prompt=800) for i in range(600)]
    arrivals = [Arrival(0.0, shorts[0]), Arrival(0.001, long)]
    arrivals += [Arrival(0.002 + 0.01 * i, p) for i, p in enumerate(shorts[1:])]
    waits = {}
    for threshold in (20, None):
        policy = RecordingLamps(
            predictor=make_predictor("oracle"), preset=small_preset, starvation_threshold=threshold
        )
        sim = Simulator(preset=small_preset, policy=policy, arrivals=arrivals)
        policy.sim = sim
        result = sim.run(RunLabels(policy="lamps", predictor="oracle"))
        assert policy.violations == 0
        waits[threshold] = next(m for m in result.requests if m.program_id == "long").max_queue_wait
        if threshold is not None:
            assert policy.admitted_while_starved >= 1
    assert waits[20] < waits[None] / 2  # the bound shortens the long job's wait a lot


def test_real_trace_runs_for_every_policy() -> None:
    from lamps_agent.presets import load_preset

    preset = load_preset("a100-gptj6b", overrides={"gpu_kv_gb": 8.0})
    programs = load_trace("multi-api").programs[:60]
    arrivals = poisson_workload(programs, qps=4.0, seed=0)
    for name in ALL_POLICIES:
        _, result = _simulate(preset, name, arrivals)
        assert result.summary.num_requests == 60


def test_unknown_policy_lists_valid_names(small_preset: Preset) -> None:
    with pytest.raises(
        UnknownNameError,
        match="valid: continuum, infercept, lamps, lamps-aging, lamps-norank, nested-wait, program, sjf, thunderagent, vllm, vllm-nocache, wait",
    ):
        make_policy("edf", predictor=make_predictor("oracle"), preset=small_preset)


def test_stepping_by_hand_with_the_events_outside_gives_the_run(small_preset: Preset) -> None:
    """The public step API, driven by a caller that owns the events (as a fleet does for each
    replica), reproduces :meth:`Simulator.run` exactly."""
    programs = [
        make_program(f"p{i}", [(40, 1.5, 30), (25, 0.2, 10), (15, 0.0, 0)], prompt=300 + 50 * i)
        for i in range(6)
    ]
    arrivals = [Arrival(0.3 * i, p) for i, p in enumerate(programs)]
    labels = RunLabels(policy="lamps", predictor="oracle")

    def simulator(arrivals: list[Arrival]) -> Simulator:
        policy = make_policy("lamps", predictor=make_predictor("oracle"), preset=small_preset)
        return Simulator(preset=small_preset, policy=policy, arrivals=arrivals)

    alone = simulator(arrivals).run(labels)
    sim = simulator([])
    assert sim.step().status is StepStatus.IDLE and sim.now == 0.0
    pending = list(enumerate(arrivals))
    returns: list[tuple[float, int, Request]] = []  # equal times: in the order they were made
    seq = itertools.count()
    finished = []
    while len(finished) < len(arrivals):
        while pending and pending[0][1].time <= sim.now:
            index, arrival = pending.pop(0)
            req = Request(request_id=index, program=arrival.program, arrival_time=arrival.time)
            sim.scheduler.add_request(req)
        while returns and returns[0][0] <= sim.now:
            req = heapq.heappop(returns)[2]
            seg = req.segment
            outcome = Outcome(
                output_tokens=seg.output_tokens,
                tool=seg.tool,
                tool_duration=seg.tool_duration,
                returned_tokens=seg.returned_tokens,
            )
            sim.scheduler.tool_returned(req, outcome)
        before = sim.now
        step = sim.step()
        if step.status is not StepStatus.RAN:
            assert sim.now == before and not step.finished and not step.tool_calls
            sim.advance_to(
                min([*(a.time for _, a in pending[:1]), *(t for t, _, _ in returns[:1])])
            )
            continue
        assert sim.now == before + step.duration
        finished += step.finished
        for req in step.tool_calls:
            assert req.tool_returns_at == sim.now + req.segment.tool_duration
            heapq.heappush(returns, (req.tool_returns_at, next(seq), req))
    assert sorted(r.request_id for r in finished) == list(range(len(arrivals)))
    assert sim.result(labels) == alone


def test_a_served_engines_time_outside_its_steps_delays_every_turn(small_preset: Preset) -> None:
    program = make_program("p", [(10, 0.5, 5), (10, 0.25, 5), (10, 0, 0)], prompt=300)
    _, base = _simulate(small_preset, "vllm", [Arrival(1.0, program)])
    served = dataclasses.replace(
        small_preset, cost=dataclasses.replace(small_preset.cost, frontend_ms_per_turn=40.0)
    )
    _, result = _simulate(served, "vllm", [Arrival(1.0, program)])
    # alone on the engine: each of the three turns reaches it 40 ms later, nothing else changes
    assert result.summary.e2e.mean == pytest.approx(base.summary.e2e.mean + 3 * 0.040)
    assert result.summary.iterations == base.summary.iterations


def test_the_policy_learns_the_gap_a_served_engine_observes(small_preset: Preset) -> None:
    """With a front end, the gap from a turn's end to the next turn's arrival is the tool plus the
    front end's time: that is what the plug-in measures, and what the simulator's policy hears."""
    program = make_program("p", [(10, 0.5, 5), (10, 0.0, 0)], prompt=300)
    served = dataclasses.replace(
        small_preset, cost=dataclasses.replace(small_preset.cost, frontend_ms_per_turn=40.0)
    )
    heard: list[float] = []
    policy = make_policy("vllm", predictor=make_predictor("oracle"), preset=served)
    original = policy.on_turn_end

    def on_turn_end(req: Request, outcome: Outcome) -> None:
        heard.append(outcome.tool_duration)
        original(req, outcome)

    policy.on_turn_end = on_turn_end  # type: ignore[method-assign]
    Simulator(preset=served, policy=policy, arrivals=[Arrival(0.0, program)]).run(
        RunLabels(policy="vllm", predictor="oracle")
    )
    assert heard[0] == pytest.approx(0.5 + 0.040)
