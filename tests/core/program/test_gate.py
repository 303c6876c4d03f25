"""The admission gate alone, over a stand-in policy: the fluid threshold on new programs, later
turns waiting for memory, the idle rule, work conservation and patience."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies.base import EngineView
from lamps_agent.policies.program import ProgramGate, ProgramsInFlight
from lamps_agent.presets import Preset, load_preset
from lamps_agent.request import Request
from tests.core.program.helpers import serving_turn

BLOCK = 16


@dataclass
class _Policy:
    """What the gate reads of a policy (GatedPolicy): terms and peaks given per request."""

    view: EngineView
    in_flight: ProgramsInFlight = field(default_factory=ProgramsInFlight)
    patience: int | None = None
    budget_tokens: float = 1000.0
    open_below_tokens: float = 0.0
    counters_held: int = 0
    counters_waited_out: int = 0
    terms: dict[int, float] = field(default_factory=dict)

    def footprint_term(self, req: Request) -> float:
        return self.terms[req.request_id]

    def predicted_peak(self, req: Request) -> float:
        return 2 * self.terms[req.request_id]

    def patience_for(self, req: Request) -> int:
        return 10**9 if self.patience is None else self.patience


def _policy(*, running: int = 1, free_blocks: int = 1000) -> _Policy:
    preset: Preset = load_preset("a100-gptj6b")
    memory = KVMemory(num_gpu_blocks=1000, num_host_blocks=0, block_size=BLOCK)
    memory.allocate(1000 - free_blocks)
    return _Policy(view=EngineView(preset=preset, memory=memory, num_running=running))


def _new(policy: _Policy, rid: int, term: float, *, tenant: str | None = None) -> Request:
    req = serving_turn(rid, session=f"s{rid}", step=0, prompt=100)
    if tenant is not None:
        req.program = dataclasses.replace(req.program, tenant=tenant)
    policy.terms[rid] = term
    return req


def _in_flight(policy: _Policy, rid: int, *, prompt: int) -> Request:
    req = serving_turn(rid, session=f"s{rid}", step=1, prompt=prompt)
    policy.in_flight.enter(f"s{rid}", agent="coder", first_prompt=100, term=50.0, turn=rid, now=0.0)
    return req


def test_new_programs_pass_while_the_fluid_footprint_stays_under_budget() -> None:
    policy = _policy()
    gate = ProgramGate(policy, resident=300.0)
    assert gate.allow(_new(policy, 1, 400.0))  # 700 of 1,000
    assert gate.allow(_new(policy, 2, 300.0))  # 1,000: at the budget
    assert not gate.allow(_new(policy, 3, 1.0))
    assert gate.exhausted and policy.counters_held == 1


def test_a_later_turn_waits_only_for_room_for_its_whole_context() -> None:
    policy = _policy(free_blocks=50)  # 40 usable past the 1 % reserve: 640 tokens
    gate = ProgramGate(policy, resident=0.0)
    small = _in_flight(policy, 1, prompt=300)
    assert gate.allow(small)  # the budget never applies to a program in flight
    big = _in_flight(policy, 2, prompt=5000)
    assert not gate.allow(big) and not gate.exhausted  # it waits for memory ...
    assert not gate.allow(_new(policy, 3, 1.0))  # ... and no new program passes it
    assert gate.exhausted and policy.counters_held == 0


def test_with_nothing_running_a_later_turn_starts_whatever_its_size() -> None:
    policy = _policy(running=0, free_blocks=5)
    assert ProgramGate(policy, resident=0.0).allow(_in_flight(policy, 1, prompt=5000))


def test_an_idle_engine_admits_the_head_whatever_its_footprint() -> None:
    policy = _policy(running=0)
    gate = ProgramGate(policy, resident=0.0)
    assert gate.allow(_new(policy, 1, 1e9))
    assert not gate.allow(_new(policy, 2, 1.0))  # only the head
    # Programs in flight, all in a tool whose return the engine cannot see: idle too.
    policy = _policy(running=3)
    _in_flight(policy, 9, prompt=100)
    policy.in_flight.tool_called(policy.in_flight["s9"], now=0.0, gap=1.0, grace=30.0)
    assert ProgramGate(policy, resident=0.0).allow(_new(policy, 1, 1e9))


def test_light_load_admits_what_plainly_fits() -> None:
    policy = _policy(free_blocks=900)  # 100 blocks in use: 1,600 tokens
    policy.open_below_tokens = 2000.0
    gate = ProgramGate(policy, resident=5000.0)  # far over budget
    assert gate.allow(_new(policy, 1, 150.0))  # 1,600 + its 300-token peak under 2,000
    assert not gate.allow(_new(policy, 2, 150.0))  # the first one's peak counts now


def test_patience_lets_a_new_program_through_after_so_many_iterations() -> None:
    policy = _policy()
    policy.patience = 10
    policy.view.iteration = 25
    _in_flight(policy, 9, prompt=100)  # a program running: the engine is not idle
    old, young = _new(policy, 1, 1e9), _new(policy, 2, 1e9)
    old.enqueued_iteration, young.enqueued_iteration = 15, 16
    gate = ProgramGate(policy, resident=0.0)
    assert gate.allow(old) and policy.counters_waited_out == 1
    assert not gate.allow(young) and policy.counters_held == 1


def test_patience_also_bounds_the_wait_behind_a_later_turn() -> None:
    policy = _policy(free_blocks=50)
    policy.patience = 10
    policy.view.iteration = 25
    gate = ProgramGate(policy, resident=0.0)
    assert not gate.allow(_in_flight(policy, 1, prompt=5000))  # waits for memory
    old, young = _new(policy, 2, 1.0), _new(policy, 3, 1.0)
    old.enqueued_iteration, young.enqueued_iteration = 15, 16
    assert gate.allow(old) and policy.counters_waited_out == 1
    assert not gate.allow(young) and policy.counters_held == 0  # not the threshold's refusal


def test_with_tenants_each_is_guaranteed_its_share_of_the_budget() -> None:
    policy = _policy()
    _in_flight(policy, 9, prompt=100)  # a program running: the engine is not idle
    # tenant a's programs hold 1,200 of the 1,000-token budget; b holds nothing
    shares: dict[str | None, float] = {"a": 0.5, "b": 0.5}
    gate = ProgramGate(policy, resident=1200.0, shares=shares, resident_by_tenant={"a": 1200.0})
    assert not gate.allow(_new(policy, 1, 10.0, tenant="a"))  # a is past its share ...
    assert gate.closes_tenant and not gate.exhausted  # ... which holds a alone
    assert gate.allow(_new(policy, 2, 300.0, tenant="b"))  # b within its 500: passes
    assert not gate.closes_tenant
    assert gate.allow(_new(policy, 3, 200.0, tenant="b"))  # 500: at its share
    assert not gate.allow(_new(policy, 4, 1.0, tenant="b"))  # past it, and the budget is full
    assert gate.closes_tenant and policy.counters_held == 2


def test_without_shares_the_first_refusal_ends_the_walk_as_before() -> None:
    policy = _policy()
    _in_flight(policy, 9, prompt=100)
    gate = ProgramGate(policy, resident=1200.0)
    assert not gate.allow(_new(policy, 2, 300.0, tenant="b"))
    assert gate.exhausted and not gate.closes_tenant


def test_a_later_turn_waiting_for_memory_holds_only_tenants_past_their_share() -> None:
    policy = _policy(free_blocks=50)
    shares: dict[str | None, float] = {"a": 0.5, "b": 0.5}
    gate = ProgramGate(policy, resident=900.0, shares=shares, resident_by_tenant={"a": 900.0})
    assert not gate.allow(_in_flight(policy, 1, prompt=5000))  # a's later turn waits for memory
    assert not gate.allow(_new(policy, 2, 1.0, tenant="a"))  # a's new programs wait behind it
    assert gate.allow(_new(policy, 3, 100.0, tenant="b"))  # b's share is b's
