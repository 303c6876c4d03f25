"""The virtual-clock vLLM engine: vLLM's scheduler stepped on the cost model's time
(:mod:`adapters.vllm.tools.virtual`).  No model runs: the tiny model's config and tokenizer only."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from adapters.vllm.tools.virtual import (
    VirtualEngine,
    VirtualOptions,
    VirtualRun,
    run_virtual,
)
from lamps_agent.metrics import RunLabels
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program, Segment
from lamps_agent.workloads.arrivals import Arrival

pytestmark = pytest.mark.vllm

BLOCK = 16  # the preset's


def preset(kv_gb: float = 0.5) -> Preset:
    """h100-llama3-8b's cost model; 0.5 GB of KV is 238 blocks of 16, 0.05 GB is 23."""
    return load_preset(
        "h100-llama3-8b", overrides={"gpu_kv_gb": kv_gb, "token_budget": 256, "max_num_seqs": 8}
    )


def agent(i: int, *, prompt: int = 100, outputs: tuple[int, ...] = (4, 3), tool: float = 0.5,
          returned: int = 20) -> Program:  # fmt: skip
    segments = []
    for k, out in enumerate(outputs):
        last = k == len(outputs) - 1
        segments.append(
            Segment(
                prompt_tokens=prompt,
                output_tokens=out,
                tool=None if last else "search",
                tool_duration=0.0 if last else tool,
                returned_tokens=0 if last else returned,
            )
        )
        prompt += out + (0 if last else returned)
    return Program(program_id=f"p{i}", agent="react", segments=tuple(segments))


def options(model: Path, **kw: object) -> VirtualOptions:
    kw.setdefault("preset", preset())
    return VirtualOptions(model=model, **kw)  # type: ignore[arg-type]


def workload(n: int = 6, gap: float = 0.05, **kw: object) -> list[Arrival]:
    return [Arrival(time=gap * i, program=agent(i, **kw)) for i in range(n)]  # type: ignore[arg-type]


def test_one_program_takes_what_the_cost_model_says(tiny_model: Path) -> None:
    p = preset()
    run = run_virtual(options(tiny_model, preset=p), [Arrival(0.0, agent(0))])
    cost = p.cost
    # Turn 0: its 100-token prompt in one step (which samples the first token), 3 decodes.
    expected = [cost.iteration_time(100, 0, 0, 100 * 50.0, 1)]
    expected += [cost.iteration_time(0, 1, 100 + k, 0.0, 0) for k in range(3)]
    # vLLM never computes a turn's last sampled token: 103 tokens have KV, 6 full blocks cached.
    # Turn 1 (100 + 4 + 20 tokens) arrives 0.5 s after turn 0 and prefills the rest.
    cached = 103 // BLOCK * BLOCK
    chunk = 124 - cached
    expected += [cost.iteration_time(chunk, 0, cached, chunk * (cached + chunk / 2), 1)]
    expected += [cost.iteration_time(0, 1, 124 + k, 0.0, 0) for k in range(2)]
    assert [s.ms / 1000 for s in run.steps] == pytest.approx(expected, rel=1e-12)
    turn0 = sum(expected[:4])
    assert run.steps[4].t == pytest.approx(turn0 + 0.5)
    (result,) = run.programs
    assert result.ttft == pytest.approx(expected[0])
    assert result.finish == pytest.approx(turn0 + 0.5 + sum(expected[4:]))
    assert run.prefix_hit_tokens == cached
    assert run.steps[4].scheduled == {"0.1": chunk}
    # Beyond the first prompt and the tool's return: the last output token and the partial block.
    assert run.recomputed_tokens == chunk - 20
    summary = run.summary(RunLabels(policy="vllm", predictor="hints"))
    assert summary.e2e.mean == pytest.approx(result.finish)
    assert summary.iterations == len(expected) == 7


def test_a_turn_ending_on_a_block_boundary_loses_that_block(tiny_model: Path) -> None:
    """100 + 12 tokens end on a block boundary, but vLLM computed only 111 of them: the 7th
    block was never full, so the next turn finds 6 blocks cached (the simulator counts 7)."""
    run = run_virtual(options(tiny_model), [Arrival(0.0, agent(0, outputs=(12, 3)))])
    assert run.prefix_hit_tokens == 6 * BLOCK
    assert run.steps[12].scheduled == {"0.1": 132 - 6 * BLOCK}


def test_stock_vllm_matches_the_simulator_where_kv_is_roomy(tiny_model: Path) -> None:
    """Same arrivals, vLLM's policy in both, no preemption and no turn ending on a block
    boundary: the same steps; the times differ only by the resident token the simulator counts
    for each decoding request (its sampled token's KV, which vLLM computes a step later)."""
    from lamps_agent.policies import make_policy
    from lamps_agent.predictors import OraclePredictor
    from lamps_agent.sim.engine import Simulator

    p = load_preset(
        "h100-llama3-8b",
        overrides={"gpu_kv_gb": 0.5, "token_budget": 256, "max_num_seqs": 8, "host_swap_gb": 0},
    )
    arrivals = workload()
    labels = RunLabels(policy="vllm", predictor="oracle")
    policy = make_policy("vllm", predictor=OraclePredictor(), preset=p)
    sim = Simulator(preset=p, policy=policy, arrivals=arrivals).run(labels).summary
    virtual = run_virtual(options(tiny_model, preset=p), arrivals).summary(labels)
    assert virtual.iterations == sim.iterations
    assert virtual.recomputed_tokens == sim.recomputed_tokens
    assert virtual.prefix_hit_tokens == sim.prefix_hit_tokens
    assert virtual.preemptions == sim.preemptions == 0
    assert virtual.makespan == pytest.approx(sim.makespan, rel=1e-4)
    assert virtual.e2e.mean == pytest.approx(sim.e2e.mean, rel=1e-4)


@pytest.mark.parametrize("policy", ["vllm", "lamps"])
def test_stock_and_plugin_finish_every_program(tiny_model: Path, policy: str) -> None:
    arrivals = workload()
    run = run_virtual(options(tiny_model, policy=policy), arrivals)
    assert [p.index for p in run.programs] == list(range(len(arrivals)))
    for p, a in zip(run.programs, arrivals, strict=True):
        assert p.arrival == a.time
        assert p.finish > p.arrival + a.program.total_tool_time
        assert 0 < p.ttft < p.finish - p.arrival
    turns = {key for s in run.steps for key in s.scheduled}
    assert turns == {f"{i}.{k}" for i in range(len(arrivals)) for k in range(2)}
    if policy == "vllm":
        assert run.plugin_stats is None
    else:
        stats = run.plugin_stats
        assert stats is not None and stats["policy"] == "lamps"
        assert stats["hints"]["ok"] == 2 * len(arrivals)  # every turn's hints were read
        assert stats["errors"] == 0
        assert stats["decisions"]["finished"] == len(arrivals)


def test_scheduled_tokens_add_up_to_prompts_less_hits_plus_outputs(tiny_model: Path) -> None:
    arrivals = workload()
    run = run_virtual(options(tiny_model), arrivals)
    assert run.preemptions == 0
    per_turn: dict[str, int] = defaultdict(int)
    first_seen: dict[str, int] = {}
    for s in run.steps:
        assert sum(s.scheduled.values()) <= 256  # the token budget
        for key, n in s.scheduled.items():
            per_turn[key] += n
            first_seen.setdefault(key, s.step)
    hits = 0
    for i, a in enumerate(arrivals):
        for k, seg in enumerate(a.program.segments):
            key = f"{i}.{k}"
            # The last sampled token is never computed: prompt - cached + output - 1.
            cached = seg.prompt_tokens + seg.output_tokens - 1 - per_turn[key]
            assert cached % BLOCK == 0  # prefix hits are whole blocks
            assert 0 <= cached <= run.steps[first_seen[key] - 1].shape.resident_kv_tokens
            hits += cached
    assert hits == run.prefix_hit_tokens > 0
    assert sum(s.shape.prefill_tokens for s in run.steps) == run.prefill_computed_tokens


@pytest.mark.parametrize("policy", ["vllm", "lamps"])
def test_tight_kv_preempts_and_records_it(tiny_model: Path, policy: str) -> None:
    # 23 blocks of 16; three 100-token prompts that grow by 60 each need 30.
    arrivals = [Arrival(0.0, agent(i, outputs=(60,))) for i in range(3)]
    run = run_virtual(options(tiny_model, preset=preset(0.05), policy=policy), arrivals)
    assert run.usable_blocks == 23
    assert run.preemptions > 0
    preempted = [(s, rid) for s in run.steps for rid in s.preempted]
    assert len(preempted) == run.preemptions == sum(p.preemptions for p in run.programs)
    for step, rid in preempted:
        assert rid not in step.scheduled
    assert max(s.used_blocks for s in run.steps) == run.peak_used_blocks <= 23
    assert len(run.programs) == 3
    assert run.summary(RunLabels(policy=policy, predictor="hints")).preemptions == run.preemptions


def records(run: VirtualRun) -> list[str]:
    return [s.to_json() for s in run.steps]


def test_same_options_same_records(tiny_model: Path) -> None:
    arrivals = workload(n=5, gap=0.02)
    opts = options(tiny_model, policy="lamps", preset=preset(0.05), seed=3)
    first, second = run_virtual(opts, arrivals), run_virtual(opts, arrivals)
    assert records(first) == records(second)
    assert first.programs == second.programs
    other = run_virtual(options(tiny_model, policy="vllm", preset=preset(0.05)), arrivals)
    assert records(other) != records(first)  # the records tell the schedulers apart


def test_the_plugin_runs_on_the_virtual_clock(tiny_model: Path) -> None:
    tool = 37.25  # virtual seconds; the run takes a fraction of one wall second
    engine = VirtualEngine(options(tiny_model, policy="lamps"), [Arrival(0.0, agent(0, tool=tool))])
    run = engine.run()
    plugin = engine.sched.lamps
    assert plugin.housekeeper._thread.ident is None  # never started in virtual mode
    # The tool returned while the engine idled: the session's gap is the tool's duration.
    assert plugin.turns.mean_gap("agent-0") == pytest.approx(tool)
    assert run.steps[4].t == pytest.approx(sum(s.ms for s in run.steps[:4]) / 1000 + tool)
    assert plugin.core.now == pytest.approx(run.programs[0].finish)


def test_options_are_validated(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy must be one of"):
        options(tiny_model, policy="nope")
    with pytest.raises(ValueError, match=r"config\.json"):
        options(tmp_path)
    with pytest.raises(ValueError, match="sorted"):
        run_virtual(options(tiny_model), [Arrival(1.0, agent(0)), Arrival(0.0, agent(1))])


def test_the_plugin_counts_the_blocks_requests_can_hold(tiny_model: Path) -> None:
    """vLLM's block 0 is its null block, never free: the core's memory is the other blocks, as
    the simulator's preset counts them (ThunderAgent sizes its capacity by the total, and one
    block more made the engine admit a program a step before the simulator)."""
    engine = VirtualEngine(options(tiny_model, policy="thunderagent", preset=preset(0.05)),
                           [Arrival(0.0, agent(0))])  # fmt: skip
    run = engine.run()
    memory = engine.sched.lamps.core.memory
    assert memory.num_gpu_blocks == run.usable_blocks == 23
