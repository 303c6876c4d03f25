"""Fair share across tenants (issue 23 item 3): the admission walk and the preemption order."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from lamps_agent.metrics import RunLabels
from lamps_agent.policies import make_policy
from lamps_agent.predictors.oracle import OraclePredictor
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.request import Request
from lamps_agent.scheduler import Scheduler, WaitingQueue
from lamps_agent.scheduler.fair_share import FairShare
from lamps_agent.sim.engine import Simulator
from lamps_agent.workloads.arrivals import Arrival
from tests.core.conftest import make_program


def _req(i: int, tenant: str | None, *, blocks: int = 0) -> Request:
    program = dataclasses.replace(make_program(f"p{i}", [(5, 0, 0)]), tenant=tenant)
    req = Request(request_id=i, program=program, arrival_time=float(i))
    req.gpu_blocks = blocks
    return req


def _walk(
    share: FairShare,
    walk: list[Request],
    running: list[Request],
    starved: frozenset[int] = frozenset(),
) -> list[int]:
    """The fair order of ``walk`` (the policy's order); ``starved`` requests waited 10 steps."""
    queue = WaitingQueue(starvation_threshold=10)
    # the starved ones entered first (the queue's starvation list is in the order of entry)
    for pos, r in sorted(enumerate(walk), key=lambda e: e[1].request_id not in starved):
        queue.push(r, (float(pos),), iteration=0 if r.request_id in starved else 10)
    order = share.order(queue, 10, running=running, blocks_of=lambda r: 1)
    return [r.request_id for r in order]


SHARE = FairShare(num_blocks=100, num_seats=10)


def test_one_tenant_keeps_the_policys_order() -> None:
    walk = [_req(i, "a") for i in range(5)]
    running = [_req(10 + i, "a", blocks=20) for i in range(5)]  # all the memory
    assert _walk(SHARE, walk, running) == [0, 1, 2, 3, 4]
    untenanted = [_req(i, None) for i in range(3)]
    assert _walk(SHARE, untenanted, []) == [0, 1, 2]


def test_a_tenant_over_its_share_waits_behind_one_under_it() -> None:
    # a holds 60 % of the KV blocks: over its half while b waits
    running = [_req(10, "a", blocks=60)]
    walk = [_req(0, "a"), _req(1, "a"), _req(2, "b"), _req(3, "a"), _req(4, "b")]
    assert _walk(SHARE, walk, running) == [2, 4, 0, 1, 3]


def test_seats_count_as_a_resource_too() -> None:
    # a holds 6 of 10 seats but few blocks: its dominant share is the seats
    running = [_req(10 + i, "a", blocks=1) for i in range(6)]
    walk = [_req(0, "a"), _req(1, "b")]
    assert _walk(SHARE, walk, running) == [1, 0]


def test_admissions_during_the_walk_count_toward_the_share() -> None:
    # b reaches its half (5 seats) after five admissions; a's requests come next, then b's rest
    walk = [_req(i, "b") for i in range(7)] + [_req(20, "a")]
    assert _walk(SHARE, walk, []) == [0, 1, 2, 3, 4, 20, 5, 6]


def test_work_conserving_a_tenant_over_its_share_is_admitted_when_nobody_else_waits() -> None:
    running = [_req(10, "a", blocks=90), _req(11, "b", blocks=1)]
    walk = [_req(0, "a"), _req(1, "a")]
    assert _walk(SHARE, walk, running) == [0, 1]


def test_a_starved_request_goes_first_within_its_tenants_part() -> None:
    running = [_req(10, "a", blocks=60)]  # a over its half, b under
    walk = [_req(0, "a"), _req(1, "a"), _req(2, "b"), _req(3, "b")]
    # b's starved request first of all; a's starved one first of a's, behind b's
    assert _walk(SHARE, walk, running, starved=frozenset({1, 3})) == [3, 2, 1, 0]


def test_weights_set_the_entitlements() -> None:
    weighted = FairShare(num_blocks=100, num_seats=10, weights={"a": 3.0})
    running = [_req(10, "a", blocks=60)]  # 60 % < a's 75 %
    walk = [_req(0, "a"), _req(1, "b")]
    assert _walk(weighted, walk, running) == [0, 1]
    assert _walk(SHARE, walk, running) == [1, 0]
    with pytest.raises(ValueError, match="must weigh > 0"):
        FairShare(num_blocks=100, num_seats=10, weights={"a": 0.0})


def test_the_tenant_over_its_share_is_preempted_first() -> None:
    share = FairShare(num_blocks=100, num_seats=10)
    a = [_req(10 + i, "a", blocks=20) for i in range(3)]  # 60 %
    b = [_req(20, "b", blocks=10)]
    over = share.victim_last([*a, *b], Counter())
    assert over is not None
    assert [over(r) for r in (*a, *b)] == [True, True, True, False]
    assert share.victim_last(a, Counter()) is None  # one tenant: the policy's order
    waiting_b = share.victim_last(a, Counter({"b": 1}))  # b waits with nothing resident
    assert waiting_b is not None and all(waiting_b(r) for r in a)


def test_the_scheduler_walks_the_fair_order(small_preset: Preset) -> None:
    policy = make_policy("vllm", predictor=OraclePredictor(), preset=small_preset)
    sched = Scheduler(preset=small_preset, policy=policy)
    hog = _req(99, "a")
    hog.gpu_blocks = small_preset.num_gpu_blocks  # a holds the whole cache
    sched.running.append(hog)
    for r in (_req(0, "a"), _req(1, "b")):
        sched.add_request(r)
    assert [r.request_id for r in sched.admissible(10)] == [1, 0]
    plain = Scheduler(preset=small_preset, policy=policy, fair_share=False)
    plain.running.append(hog)
    for r in (_req(2, "a"), _req(3, "b")):
        plain.add_request(r)
    assert [r.request_id for r in plain.admissible(10)] == [2, 3]


def _tenanted(program: Program, tenant: str, i: int) -> Program:
    return dataclasses.replace(program, program_id=f"{tenant}-{i}", tenant=tenant)


def _burst_e2e(preset: Preset, *, fair_share: bool) -> tuple[float, float]:
    """Tenant a sends 40 programs at once; tenant b sends 4 a moment later.  Mean E2E of b's,
    and of a's."""
    base = make_program("p", [(200, 1.0, 50), (200, 1.0, 50), (100, 0.0, 0)], prompt=1500)
    arrivals = [Arrival(time=0.0, program=_tenanted(base, "a", i)) for i in range(40)]
    arrivals += [Arrival(time=0.01, program=_tenanted(base, "b", i)) for i in range(4)]
    policy = make_policy("vllm", predictor=OraclePredictor(), preset=preset)
    sim = Simulator(preset=preset, policy=policy, arrivals=arrivals, fair_share=fair_share)
    result = sim.run(RunLabels(policy="vllm", predictor="oracle", trace="burst", qps=0.0, seed=0))
    e2e: dict[str, list[float]] = {"a": [], "b": []}
    for r in result.requests:
        e2e[r.program_id.split("-")[0]].append(r.e2e)
    return (sum(e2e["b"]) / len(e2e["b"]), sum(e2e["a"]) / len(e2e["a"]))


def test_a_burst_of_one_tenant_does_not_hold_back_another(small_preset: Preset) -> None:
    preset = dataclasses.replace(small_preset, max_num_seqs=8)
    b_fair, a_fair = _burst_e2e(preset, fair_share=True)
    b_fcfs, a_fcfs = _burst_e2e(preset, fair_share=False)
    # without the share b's programs queue behind all of a's; with it they get half the engine
    assert b_fair < 0.5 * b_fcfs
    assert a_fair < 1.2 * a_fcfs  # the bursting tenant pays little for it


def test_the_fair_walk_gives_every_waiting_request_once() -> None:
    rng = random.Random(7)
    for _ in range(50):
        walk = [_req(i, rng.choice(["a", "b", "c"])) for i in range(30)]
        running = [
            _req(100 + i, rng.choice(["a", "b"]), blocks=rng.randrange(20)) for i in range(5)
        ]
        starved = frozenset(rng.sample(range(30), 4))
        order = _walk(SHARE, walk, running, starved)
        assert sorted(order) == list(range(30))


def test_a_tenant_the_gate_closes_gets_nothing_more_from_the_walk() -> None:
    queue = WaitingQueue(starvation_threshold=10)
    walk = [_req(0, "a"), _req(1, "b"), _req(2, "a"), _req(3, "b"), _req(4, "a")]
    for pos, r in enumerate(walk):
        queue.push(r, (float(pos),), iteration=10)
    closed: set[str | None] = set()
    seen = []
    for req in SHARE.order(queue, 10, running=[], blocks_of=lambda r: 1, closed=closed):
        seen.append(req.request_id)
        if req.request_id == 0:
            closed.add("a")  # the gate held tenant a at its first request
    assert seen == [0, 1, 3]
    # one tenant waiting: closing it ends the walk
    alone = WaitingQueue(starvation_threshold=10)
    for pos, r in enumerate([_req(5, "a"), _req(6, "a")]):
        alone.push(r, (float(pos),), iteration=10)
    held: set[str | None] = set()
    got = []
    for req in SHARE.order(alone, 10, running=[], blocks_of=lambda r: 1, closed=held):
        got.append(req.request_id)
        held.add("a")
    assert got == [5]
