"""One scheduler, two engines: every registered policy makes the same decisions in the simulator's
scheduler and inside a real (CPU, tiny-model) vLLM engine, where both see the same state.

Checked per policy: the admission order of requests submitted together, the KV strategy chosen for
a paused turn (short and long tool), which pin is released first under memory pressure, and, for
the policies with an admission gate, that requests are held and then admitted."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from lamps_agent.policies import POLICIES, make_policy
from lamps_agent.predictors import OraclePredictor
from lamps_agent.predictors.base import Outcome
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program, Segment
from lamps_agent.request import KVStrategy
from lamps_agent.request import Request as CoreRequest
from lamps_agent.scheduler import Scheduler
from tests.adapters_vllm.conftest import Tokens, admissions, generate, hints, scheduler_of

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PRESET = "h100-llama3-8b"  # the plug-in's default preset
PROMPT = 300
OUTPUTS = [400, 10, 200, 50]  # predicted outputs of four requests submitted together


def sim_preset() -> Preset:
    # No host swap store, as on an engine without the swap connector.
    return dataclasses.replace(load_preset(PRESET), host_swap_gb=0.0)


# The program policy's gate is work-conserving while the KV is mostly free (as it is for a few
# short requests): a budget of about one request puts it under the pressure these tests need.
GATE_PRESSURE: dict[str, dict[str, Any]] = {
    # engage_at=0: the rules on from the first step.  Otherwise they engage on a time average
    # of the load over wall-clock seconds, and an engine that steps fast can finish the six
    # requests before it engages (seen once in a full run).
    "program": {"target_utilization": 0.001, "open_below": 0.0, "engage_at": 0.0},
    # ThunderAgent's watermark λ: a third of the pool, a few of the requests at once.
    "thunderagent": {"watermark": 0.3},
}
# A gate that waits a step at most: WAIT's patience; ThunderAgent's liveness timeout.
SHORT_WAIT: dict[str, dict[str, Any]] = {"thunderagent": {"wait_timeout_s": 1e-3}}
# The pin each policy gives up first under pressure: A (larger context, longer tool) by the
# least-waste keys; Continuum the latest program's, ThunderAgent the smallest (B).
FIRST_RELEASED = {"continuum": "B", "thunderagent": "B"}


def gate_preset() -> Preset:
    """The simulator with the test engine's pool (``KV_BYTES``, ~4,000 tokens): a gate that
    holds by the share of the pool (ThunderAgent's watermark) holds alike in both."""
    return load_preset(PRESET, overrides={"gpu_kv_gb": 0.5, "host_swap_gb": 0.0})


def sim_scheduler(policy: str, preset: Preset | None = None, **options: Any) -> Scheduler:
    preset = preset or sim_preset()
    return Scheduler(
        preset=preset,
        policy=make_policy(policy, predictor=OraclePredictor(), preset=preset, **options),
    )


def core_turn(
    rid: int, *, prompt: int, output: int, tool: str | None, duration: float
) -> CoreRequest:
    """A turn as the plug-in builds it from hints (this turn, plus the next one if a tool)."""
    first = Segment(prompt_tokens=prompt, output_tokens=output, tool=tool, tool_duration=duration)
    segments = (
        (first,)
        if tool is None
        else (first, Segment(prompt_tokens=prompt + output, output_tokens=1))
    )
    return CoreRequest(
        request_id=rid,
        program=Program(program_id=f"r{rid}", agent="vllm", segments=segments),
        arrival_time=float(rid) * 1e-3,
    )


@pytest.fixture(params=POLICIES.names())
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def engines(engine_factory: Any) -> Any:
    """One engine per (policy, settings), alive for the whole module: an engine collected while
    another runs would tear down vLLM's process-wide parallel state under it."""
    cache: dict[tuple[str, str, bool], Any] = {}

    def get(policy: str, client_strategy: str = "advisory", *, pressure: bool = False) -> Any:
        """``pressure``: the policy's GATE_PRESSURE options (a gate that holds at once); else
        its defaults, as the simulator's side of each contract runs it."""
        pressure = pressure and policy in GATE_PRESSURE
        key = (policy, client_strategy, pressure)
        if key not in cache:
            options = {}
            if client_strategy == "obey" and POLICIES.get(policy).gates_admission:
                # Pressure needs concurrent requests: a gate that waits one step at most.
                options = {"policy_options": SHORT_WAIT.get(policy, {"patience": 1})}
            elif pressure:
                options = {"policy_options": GATE_PRESSURE[policy]}
            cache[key] = engine_factory(policy, client_strategy=client_strategy, **options)
        return cache[key]

    return get


@pytest.fixture
def engine(engines: Any, policy: str) -> Any:
    return engines(policy)


def _params(**kw: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(ignore_eos=True, temperature=0.0, **kw)


def _run_to_end(llm: Any) -> None:
    engine = llm.llm_engine
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            return
        engine.step()
    raise AssertionError("the engine did not finish its requests")


# -- the simulator's side --------------------------------------------------------------------
def sim_admission_order(policy: str) -> list[int]:
    sched = sim_scheduler(policy)
    for i, out in enumerate(OUTPUTS):
        sched.add_request(core_turn(i, prompt=PROMPT, output=out, tool=None, duration=0.0))
    return [int(r.program.program_id[1:]) for r in sched.admissible(8)]


def sim_strategy(policy: str, duration: float) -> KVStrategy | None:
    sched = sim_scheduler(policy)
    req = core_turn(0, prompt=600, output=20, tool="search", duration=duration)
    sched.add_request(req)
    now = 0.0
    for _ in range(1000):
        out = sched.schedule()
        now += 0.01
        sched.set_time(now)
        for end in sched.update_from_output(out, step_time=0.01):
            return end.strategy
    raise AssertionError("the turn never ended")


def sim_first_pin_released(policy: str) -> str:
    sched = sim_scheduler(policy)
    for rid, (key, prompt, duration) in enumerate((("A", 600, 100.0), ("B", 300, 10.0))):
        req = core_turn(rid, prompt=prompt, output=20, tool="search", duration=duration)
        sched.add_request(req)
        sched.admit(req)
        req.kv_tokens = prompt + 20
        outcome = Outcome(
            output_tokens=20, tool="search", tool_duration=duration, returned_tokens=0
        )
        sched.end_turn(req, outcome, continues=True, key=key, override=KVStrategy.PRESERVE)
        sched.sync_view()
        sched.set_time(sched.now + 0.01)  # the engine steps on before anything else happens
        revisited = sched.revisit_paused()
        if revisited:
            return str(revisited[0][0].key)
    released = sched.pin_to_release()
    assert released is not None
    return str(released.key)


# -- the engine's side -------------------------------------------------------------------------
def vllm_admission_order(llm: Any) -> list[int]:
    tokens = Tokens(4)
    engine = llm.llm_engine
    with admissions(llm) as admitted:
        for i, out in enumerate(OUTPUTS):
            xargs = hints(
                f"order-{i}", 0, tool=None, duration=0.0, strategy=KVStrategy.DISCARD, output=out
            )
            engine.add_request(
                f"q{i}",
                {"prompt_token_ids": tokens(PROMPT)},
                _params(max_tokens=3, extra_args=xargs),
            )
        _run_to_end(llm)
    return [int(a.split("-")[0][1:]) for a in admitted]


def vllm_strategy(llm: Any, session: str, duration: float) -> KVStrategy | None:
    lamps = scheduler_of(llm).lamps
    before = dataclasses.asdict(lamps.decisions)
    xargs = hints(session, 0, tool="search", duration=duration, strategy=KVStrategy.SWAP, output=20)
    llm.llm_engine.add_request(
        session, {"prompt_token_ids": Tokens(9)(600)}, _params(max_tokens=20, extra_args=xargs)
    )
    _run_to_end(llm)
    after = dataclasses.asdict(lamps.decisions)
    changed = [s for s in KVStrategy if after[s.value] == before[s.value] + 1]
    if after["finished"] == before["finished"] + 1:
        return None
    assert len(changed) == 1, (before, after)
    return changed[0]


def vllm_first_pin_released(llm: Any) -> str:
    sched = scheduler_of(llm)
    tokens = Tokens(11)
    for key, prompt, duration in (("A", 600, 100.0), ("B", 300, 10.0)):
        xargs = hints(
            key, 0, tool="search", duration=duration, strategy=KVStrategy.PRESERVE, output=20
        )
        llm.llm_engine.add_request(
            key, {"prompt_token_ids": tokens(prompt)}, _params(max_tokens=20, extra_args=xargs)
        )
        _run_to_end(llm)
        if len(sched.lamps.pins.pins) < 1 + (key == "B"):
            return {"A", "B"}.difference(sched.lamps.pins.pins).pop()  # a revisit let it go
    core = sched.lamps.core
    released: list[str] = []  # pins given up under pressure, in order: by the core's release
    release, revisit = core.pin_to_release, core.revisit_paused  # or by the policy's revisit

    def releasing(*, exclude: Any = None) -> Any:
        paused = release(exclude=exclude)
        if paused is not None:
            released.append(str(paused.key))
        return paused

    def revisiting() -> Any:
        changes = revisit()
        released.extend(str(paused.key) for paused, _ in changes)
        return changes

    core.pin_to_release, core.revisit_paused = releasing, revisiting
    try:
        for k in range(1, 9):  # ever more concurrent prompts until the first pin gives way
            for j in range(k):
                llm.llm_engine.add_request(
                    f"press{k}-{j}", {"prompt_token_ids": tokens(700)}, _params(max_tokens=2)
                )
            _run_to_end(llm)
            if released:
                return released[0]
            assert {"A", "B"} <= set(sched.lamps.pins.pins), "a pin left other than by pressure"
    finally:
        core.pin_to_release, core.revisit_paused = release, revisit
    raise AssertionError("no pressure built up")


# -- the contract ------------------------------------------------------------------------------
def test_admission_order_of_requests_submitted_together(engine: Any, policy: str) -> None:
    assert vllm_admission_order(engine) == sim_admission_order(policy)


def test_kv_strategy_of_a_paused_turn(engine: Any, policy: str) -> None:
    for session, duration in (("short", 0.05), ("long", 120.0)):
        assert vllm_strategy(engine, f"{policy}-{session}", duration) is sim_strategy(
            policy, duration
        ), session


def test_which_pin_is_released_first(engines: Any, policy: str) -> None:
    """Two sessions pinned (A: larger context, longer tool): a policy that revisits lets A go at
    once; under memory pressure the policy's release key picks A too (Continuum and
    ThunderAgent: B, ``FIRST_RELEASED``) — in both engines."""
    llm = engines(policy, "obey")
    expected = FIRST_RELEASED.get(policy, "A")
    assert vllm_first_pin_released(llm) == sim_first_pin_released(policy) == expected


@pytest.mark.parametrize("gated", [n for n in POLICIES.names() if POLICIES.get(n).gates_admission])
def test_gated_policies_hold_and_then_admit(engines: Any, gated: str) -> None:
    # The simulator's scheduler: one request running, six arriving together: some are held.
    sched = sim_scheduler(gated, gate_preset(), **GATE_PRESSURE.get(gated, {}))
    first = core_turn(0, prompt=PROMPT, output=200, tool=None, duration=0.0)
    sched.add_request(first)
    sched.admit(first)
    for i in range(1, 7):
        sched.add_request(core_turn(i, prompt=PROMPT, output=500, tool=None, duration=0.0))
    sched.sync_view()
    assert len(list(sched.admissible(8))) < 6

    # The engine: the same, through vLLM; every request completes.
    llm = engines(gated, pressure=True)
    engine = llm.llm_engine
    before = scheduler_of(llm).lamps_stats()["first_turn_waits"]  # the engine is shared
    tokens = Tokens(12)
    xargs = hints("g0", 0, tool=None, duration=0.0, strategy=KVStrategy.DISCARD, output=200)
    engine.add_request(
        "g0", {"prompt_token_ids": tokens(PROMPT)}, _params(max_tokens=200, extra_args=xargs)
    )
    engine.step()
    for i in range(1, 7):
        xargs = hints(f"g{i}", 0, tool=None, duration=0.0, strategy=KVStrategy.DISCARD, output=500)
        engine.add_request(
            f"g{i}", {"prompt_token_ids": tokens(PROMPT)}, _params(max_tokens=30, extra_args=xargs)
        )
    finished = set()
    for _ in range(10_000):
        if not engine.has_unfinished_requests():
            break
        finished |= {o.request_id.split("-")[0] for o in engine.step() if o.finished}
    stats = scheduler_of(llm).lamps_stats()
    assert stats["gate_held_steps"] >= 1  # the gate held requests it had seats for ...
    assert finished == {f"g{i}" for i in range(7)}  # ... and admitted every one of them
    # The plug-in's split of the new programs' waits says so too, and counts each first turn.
    waits = stats["first_turn_waits"]

    def added(key: str) -> float:  # this test's sum of a per-turn mean
        return waits[key] * waits["turns"] - before[key] * before["turns"]

    assert waits["turns"] - before["turns"] == 7
    assert added("gate_iterations") >= 1 and added("refused_iterations") >= 1


def test_a_sessions_next_turn_queues_by_its_own_arrival_under_stock_order(engines: Any) -> None:
    """Stock order: a session's turn after a tool is a new request to vLLM, so a program that
    arrived in between goes first — in the simulator (the turn re-enters at "now") and in the
    plug-in (which once queued it at the session's first arrival, INFERCEPT's order)."""
    # The simulator's scheduler.
    sched = sim_scheduler("vllm")
    session = core_turn(0, prompt=PROMPT, output=5, tool="search", duration=1.0)
    sched.add_request(session)
    sched.admit(session)
    session.kv_tokens = PROMPT + 5
    outcome = Outcome(output_tokens=5, tool="search", tool_duration=1.0, returned_tokens=0)
    sched.end_turn(session, outcome, continues=True, key="S", override=KVStrategy.DISCARD)
    sched.set_time(1.0)
    newcomer = core_turn(1, prompt=PROMPT, output=5, tool=None, duration=0.0)
    sched.add_request(newcomer)
    sched.set_time(2.0)
    sched.tool_returned(session, outcome)
    assert [r.request_id for r in sched.admissible(8)] == [1, 0]

    # The engine.
    llm = engines("vllm")
    tokens = Tokens(21)
    first = tokens(PROMPT)
    xargs = hints("S", 0, tool="search", duration=1.0, strategy=KVStrategy.DISCARD, output=5)
    out = generate(llm, first, max_tokens=5, xargs=xargs)
    engine = llm.llm_engine
    with admissions(llm) as admitted:
        engine.add_request("N", {"prompt_token_ids": tokens(PROMPT)}, _params(max_tokens=3))
        follow = first + list(out.outputs[0].token_ids) + tokens(5)
        xargs = hints("S", 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD, output=3)
        engine.add_request(
            "S1", {"prompt_token_ids": follow}, _params(max_tokens=3, extra_args=xargs)
        )
        _run_to_end(llm)
    assert [a.split("-")[0] for a in admitted] == ["N", "S1"]
