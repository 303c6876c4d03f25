"""Step-by-step comparison of two engines' runs (lamps_agent/stepdiff.py) and the simulator's own
step records (``Simulator(record_steps=True)``)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

from lamps_agent.metrics import RunLabels
from lamps_agent.policies import make_policy
from lamps_agent.predictors import OraclePredictor
from lamps_agent.presets import load_preset
from lamps_agent.sim.engine import Simulator
from lamps_agent.stepdiff import compare_steps, diff_lines
from lamps_agent.steps import StepRecord, StepShape, read_step_log, write_step_log
from lamps_agent.workloads import generate_programs
from lamps_agent.workloads.arrivals import poisson_workload


def _step(i: int, scheduled: dict[str, int], preempted: tuple[str, ...] = ()) -> StepRecord:
    return StepRecord(
        step=i, t=i * 0.01, ms=10.0, shape=StepShape(decode_seqs=len(scheduled)),
        scheduled=scheduled, preempted=list(preempted), used_blocks=i,
    )  # fmt: skip


def _run(n: int) -> list[StepRecord]:
    return [_step(i + 1, {"0.0": 1, f"{i}.1": 2}) for i in range(n)]


def test_identical_runs_have_no_divergence() -> None:
    diff = compare_steps(_run(20), _run(20))
    assert diff.first is None and diff.identical_share == 1.0 and diff.lockstep == 20
    assert "first divergence: none" in diff_lines(diff)


def test_one_extra_step_costs_one_step_of_the_share_not_every_later_one() -> None:
    a = _run(20)
    b = [*a[:5], _step(99, {"7.0": 300}), *a[5:]]
    diff = compare_steps(a, b)
    assert diff.first is not None and diff.first.step == 6
    assert diff.first.only_b == {"7.0": 300} and set(diff.first.only_a) == set(a[5].scheduled)
    assert diff.lockstep == 5
    assert diff.matched == 20 and diff.identical_share == 20 / 21


def test_the_divergence_names_token_differences_and_preemptions() -> None:
    a, b = _run(4), _run(4)
    b[2] = _step(3, {"0.0": 1, "2.1": 5}, preempted=("1.0",))  # a[2]: {"0.0": 1, "2.1": 2}
    diff = compare_steps(a, b)
    assert diff.first is not None and diff.first.step == 3
    assert diff.first.tokens_differ == {"2.1": (2, 5)}
    text = diff.first.describe(("sim", "vllm"))
    assert "2.1: 2 tokens in sim, 5 in vllm" in text and "preempted [] in sim" in text


def test_a_shorter_run_diverges_where_it_ends() -> None:
    diff = compare_steps(_run(3), _run(5))
    assert diff.first is not None and diff.first.step == 4 and diff.first.only_a == {}
    assert "A ran out of steps" in diff.first.describe()
    assert diff.matched == 3 and diff.a.steps == 3 and diff.b.steps == 5


def _simulate(policy: str, arrivals: list, tmp: Path | None = None) -> Simulator:  # type: ignore[type-arg]
    preset = load_preset("h100-llama3-8b")
    sim = Simulator(
        preset=preset,
        policy=make_policy(policy, predictor=OraclePredictor(), preset=preset),
        arrivals=arrivals,
        record_steps=True,
    )
    sim.run(RunLabels(policy=policy, predictor="oracle"))
    return sim


def test_the_simulator_records_every_step_in_the_step_log_format(tmp_path: Path) -> None:
    arrivals = poisson_workload(generate_programs(6, seed=1), qps=2.0, seed=0)
    sim = _simulate("vllm", arrivals)
    steps = sim.steps
    assert steps is not None and len(steps) == sim.scheduler.iteration
    for prev, nxt in itertools.pairwise(steps):
        assert prev.t + prev.ms / 1000.0 <= nxt.t + 1e-9  # steps do not overlap
    assert steps[-1].t + steps[-1].ms / 1000.0 == sim.now
    # each turn: its first turn's prompt prefilled, then one token per step until its output
    tokens = Counter[str]()
    for r in steps:
        assert sum(r.scheduled.values()) == r.shape.prefill_tokens + r.shape.decode_seqs
        tokens.update(r.scheduled)
    for i, arrival in enumerate(arrivals):
        first = arrival.program.segments[0]
        assert tokens[f"{i}.0"] == first.prompt_tokens + first.output_tokens - 1
        assert all(f"{i}.{t}" in tokens for t in range(len(arrival.program.segments)))
    # the records round-trip through the step-log file and compare equal to themselves
    write_step_log(tmp_path / "sim.jsonl", steps)
    again = read_step_log(tmp_path / "sim.jsonl")
    assert again == steps and compare_steps(steps, again).identical_share == 1.0


def test_two_policies_diverge_where_their_schedules_part() -> None:
    # no memory pressure here: what parts them is the prefix cache (vllm-nocache recomputes a
    # resumed turn's whole context; lamps would run stock's schedule, keeping the same blocks)
    arrivals = poisson_workload(generate_programs(12, seed=2), qps=6.0, seed=0)
    a, b = _simulate("vllm", arrivals).steps, _simulate("vllm-nocache", arrivals).steps
    assert a is not None and b is not None
    diff = compare_steps(a, b)
    assert diff.first is not None and 0 < diff.identical_share < 1
    # before the first divergence the two ran the same schedule
    assert [r.scheduled for r in a[: diff.lockstep]] == [r.scheduled for r in b[: diff.lockstep]]
