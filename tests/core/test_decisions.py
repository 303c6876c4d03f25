"""One decision, one place: the simulator's batch builder and vLLM's loop as the plug-in drives
the core (tests/fake_engine.py) make the same decisions, step by step, for every policy —
admissions, the KV strategy of each paused turn, preemption victims, pins released, expired and
revisited.  Run alone with ``pytest -m decisions``; needs no vLLM."""

from __future__ import annotations

import dataclasses

import pytest

from lamps_agent.policies import POLICIES, make_policy
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset
from lamps_agent.scheduler.core import Decision, DecisionKind
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.workloads import Arrival, generate_programs, poisson_workload
from tests.fake_engine import fake_vllm_engine

pytestmark = pytest.mark.decisions

ALL_POLICIES = POLICIES.names()


def _arrivals(seed: int) -> list[Arrival]:
    fits = [p for p in generate_programs(120, seed=seed) if p.segments[-1].prompt_tokens < 3000]
    return poisson_workload(fits[:60], qps=10.0, seed=seed)


def _decisions(preset: Preset, policy: str, arrivals: list[Arrival], *, fake: bool):
    pol = make_policy(policy, predictor=make_predictor("oracle"), preset=preset)
    if fake:
        sim = fake_vllm_engine(preset=preset, policy=pol, arrivals=arrivals)
    else:
        sim = Simulator(preset=preset, policy=pol, arrivals=arrivals)
        sim.scheduler.decisions = []
    result = sim.run(RunLabels(policy=policy, predictor="oracle"))
    decisions = sim.scheduler.decisions
    assert decisions is not None
    return decisions, result


def _first_difference(a: list[Decision], b: list[Decision]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"decision {i}: simulator {x} vs fake vLLM {y}"
    return f"lengths differ: {len(a)} vs {len(b)}"


@pytest.fixture(scope="module")
def pressure_preset(small_preset: Preset) -> Preset:
    return dataclasses.replace(small_preset, gpu_kv_gb=1.5)


@pytest.fixture(scope="module")
def small_preset() -> Preset:  # module-scoped twin of tests/core/conftest.py's fixture
    from lamps_agent.presets import load_preset

    return load_preset("a100-gptj6b", overrides={"gpu_kv_gb": 3.0, "host_swap_gb": 1.0})


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_both_drivers_make_the_same_decisions_step_by_step(
    pressure_preset: Preset, policy: str
) -> None:
    arrivals = _arrivals(seed=3)
    sim, sim_result = _decisions(pressure_preset, policy, arrivals, fake=False)
    fake, fake_result = _decisions(pressure_preset, policy, arrivals, fake=True)
    assert sim == fake, _first_difference(sim, fake)
    assert sim_result.requests == fake_result.requests
    kinds = {d.kind for d in sim}
    assert DecisionKind.ADMIT in kinds and DecisionKind.PAUSE in kinds
    # A policy with an admission gate may keep the engine out of preemption altogether.
    gated = POLICIES.get(policy).gates_admission
    assert DecisionKind.PREEMPT in kinds or gated, "no memory pressure was reached"


def test_the_workload_reaches_preemption_and_pin_release(pressure_preset: Preset) -> None:
    """The comparison means something: the run preempts and releases pins under pressure."""
    decisions, _ = _decisions(pressure_preset, "lamps", _arrivals(seed=3), fake=False)
    kinds = {d.kind for d in decisions}
    assert DecisionKind.PREEMPT in kinds and DecisionKind.RELEASE in kinds


def test_a_driver_that_preempts_its_own_way_is_caught(
    pressure_preset: Preset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check has teeth: a plug-in that left vLLM's running list in admission order (so vLLM
    picks its own victim, the last admitted) makes different decisions from the core's."""
    import tests.fake_engine as fake_engine

    monkeypatch.setattr(fake_engine, "order_running", lambda running, core, core_of: None)
    arrivals = _arrivals(seed=3)
    sim, _ = _decisions(pressure_preset, "lamps", arrivals, fake=False)
    fake, _ = _decisions(pressure_preset, "lamps", arrivals, fake=True)
    assert sim != fake
    first = next(i for i, (a, b) in enumerate(zip(sim, fake, strict=False)) if a != b)
    assert DecisionKind.PREEMPT in {sim[first].kind, fake[first].kind}
