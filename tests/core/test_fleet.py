"""The fleet simulator: one replica is the single simulator exactly; routing keeps or moves
sessions as each policy says; moving a session releases its KV where it was; nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamps_agent.cli.main import main
from lamps_agent.errors import UnknownNameError
from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies import POLICIES, LampsPolicy, make_policy
from lamps_agent.policies.base import AdmissionGate, Policy, TenantShares
from lamps_agent.predictors import make_predictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.request import KVStrategy, Request, RequestState
from lamps_agent.scheduler import Scheduler
from lamps_agent.sim import RunLabels, Simulator
from lamps_agent.sim.fleet import Fleet, FleetResult
from lamps_agent.sim.routing import (
    ROUTERS,
    AffinitySpillRouter,
    ReplicaLoad,
    Turn,
    make_router,
    session_hash,
)
from lamps_agent.workloads import Arrival, generate_programs, poisson_workload
from tests.core.conftest import make_program

LABELS = RunLabels(policy="lamps", predictor="oracle")


@pytest.fixture(scope="module")
def workload() -> list[Arrival]:
    """Multi-turn programs under memory pressure on ``small_preset`` (pins released, swaps)."""
    fits = [p for p in generate_programs(200, seed=7) if p.segments[-1].prompt_tokens < 4000]
    return poisson_workload(fits[:60], qps=8.0, seed=7)


def _fleet(
    preset: Preset,
    arrivals: list[Arrival],
    *,
    replicas: int,
    routing: str,
    policy: str = "lamps",
    **options: float,
) -> Fleet:
    predictor = make_predictor("oracle", seed=1)  # one registry for the fleet
    policies = [make_policy(policy, predictor=predictor, preset=preset) for _ in range(replicas)]
    router = make_router(routing, replicas=replicas, preset=preset, **options)
    return Fleet(preset=preset, policies=policies, router=router, arrivals=arrivals)


def _run(preset: Preset, arrivals: list[Arrival], **kw: object) -> tuple[Fleet, FleetResult]:
    fleet = _fleet(preset, arrivals, **kw)  # type: ignore[arg-type]
    return fleet, fleet.run(LABELS)


def _multi_turn(result: FleetResult) -> dict[int, tuple[int, ...]]:
    return {rid: turns for rid, turns in result.placements.items() if len(turns) > 1}


# -- one replica is the simulator --------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES.names())
def test_one_replica_equals_the_simulator_for_every_policy(
    policy: str, small_preset: Preset, workload: list[Arrival]
) -> None:
    sim = Simulator(
        preset=small_preset,
        policy=make_policy(policy, predictor=make_predictor("oracle", seed=1), preset=small_preset),
        arrivals=workload,
    )
    alone = sim.run(LABELS)
    _, fleet = _run(small_preset, workload, replicas=1, routing="round-robin", policy=policy)
    assert fleet.summary == alone.summary
    assert fleet.run.requests == alone.requests
    assert alone.summary.recomputed_tokens > 0  # memory pressure was real


@pytest.mark.parametrize("routing", ROUTERS.names())
def test_one_replica_is_the_same_run_under_every_router(
    routing: str, small_preset: Preset, workload: list[Arrival]
) -> None:
    _, base = _run(small_preset, workload, replicas=1, routing="round-robin")
    _, other = _run(small_preset, workload, replicas=1, routing=routing)
    assert other.summary == base.summary
    assert other.moves == 0


# -- routing -----------------------------------------------------------------------------------
def test_session_affinity_keeps_every_turn_of_a_program_on_one_replica(
    small_preset: Preset, workload: list[Arrival]
) -> None:
    _, result = _run(small_preset, workload, replicas=4, routing="session-affinity")
    multi = _multi_turn(result)
    assert multi  # the check has programs to look at
    assert all(len(set(turns)) == 1 for turns in multi.values())
    assert result.moves == 0 and result.dropped_tokens == 0
    assert len({turns[0] for turns in result.placements.values()}) == 4  # spread over all


def test_round_robin_moves_sessions_and_recomputes_more_than_affinity(
    small_preset: Preset, workload: list[Arrival]
) -> None:
    _, sticky = _run(small_preset, workload, replicas=4, routing="session-affinity")
    _, rr = _run(small_preset, workload, replicas=4, routing="round-robin")
    turns = sum(len(t) for t in rr.placements.values())
    later_turns = turns - len(rr.placements)
    assert rr.moves >= later_turns * 0.7  # 3 of 4 later turns land elsewhere, on average
    assert rr.dropped_tokens > 0
    assert rr.summary.recomputed_tokens > sticky.summary.recomputed_tokens + rr.dropped_tokens // 2
    assert sum(r.moved_out for r in rr.replicas) == rr.moves


def test_cache_aware_returns_to_the_replica_that_holds_the_kv(
    small_preset: Preset, workload: list[Arrival]
) -> None:
    _, result = _run(small_preset, workload, replicas=4, routing="cache-aware")
    # A move happens only where nothing was held: no KV is ever dropped by a move.
    assert result.dropped_tokens == 0


def test_cache_aware_follows_a_prefix_still_cached_where_least_loaded_does_not() -> None:
    """vLLM's policy discards at every tool call; the prefix stays in the replica's prefix cache.
    When the tool returns, the session's replica is the busier one: least-loaded moves the turn
    (a full recompute), cache-aware goes back to the cached prefix."""
    preset = load_preset("h100-llama3-8b")
    busy_small = make_program("x", [(2000, 0.0, 0)], prompt=1000)
    session = make_program("a", [(10, 1.0, 10), (10, 0.0, 0)], prompt=2000)
    busy_big = make_program("y", [(2000, 0.0, 0)], prompt=3000)
    arrivals = [Arrival(0.0, busy_small), Arrival(0.1, session), Arrival(0.5, busy_big)]
    runs = {}
    for routing in ("least-loaded", "cache-aware"):
        policies = [
            make_policy("vllm", predictor=make_predictor("oracle"), preset=preset) for _ in range(2)
        ]
        router = make_router(routing, replicas=2, preset=preset)
        fleet = Fleet(preset=preset, policies=policies, router=router, arrivals=arrivals)
        runs[routing] = fleet.run(LABELS)
    assert runs["least-loaded"].placements[1] == (1, 0)
    assert runs["cache-aware"].placements[1] == (1, 1)
    assert runs["cache-aware"].summary.prefix_hit_tokens >= 2000
    assert runs["least-loaded"].summary.prefix_hit_tokens == 0


def test_spill_over_moves_only_past_its_threshold(
    small_preset: Preset, workload: list[Arrival]
) -> None:
    _, sticky = _run(small_preset, workload, replicas=4, routing="session-affinity")
    _, never = _run(
        small_preset, workload, replicas=4, routing="affinity-spill", spill_threshold=100.0
    )
    _, eager = _run(
        small_preset, workload, replicas=4, routing="affinity-spill", spill_threshold=0.0
    )
    assert never.moves == 0
    assert never.placements == sticky.placements
    assert never.summary == sticky.summary
    assert eager.moves > 0
    assert eager.placements != sticky.placements


def test_spill_router_moves_exactly_when_home_exceeds_the_least_loaded_by_the_threshold(
    small_preset: Preset,
) -> None:
    router = AffinitySpillRouter(replicas=3, preset=small_preset, spill_threshold=0.1)
    limit = int(router.spill_tokens)
    turn = Turn(session=5, prompt_tokens=100, home=2)

    def loads(home_tokens: int) -> list[ReplicaLoad]:
        return [
            ReplicaLoad(index=0, requests=1, tokens=1000),
            ReplicaLoad(index=1, requests=1, tokens=500),
            ReplicaLoad(index=2, requests=1, tokens=home_tokens),
        ]

    assert router.route(turn, loads(500 + limit)) == 2  # at the threshold: stays
    assert router.route(turn, loads(500 + limit + 1)) == 1  # past it: the least loaded
    first = Turn(session=5, prompt_tokens=100)
    assert router.route(first, loads(0)) == session_hash(5, 3)


def test_routers_on_their_own(small_preset: Preset) -> None:
    loads = [
        ReplicaLoad(index=i, requests=r, tokens=t)
        for i, (r, t) in enumerate([(2, 300), (1, 300), (5, 100), (0, 100)])
    ]
    rr = make_router("round-robin", replicas=4, preset=small_preset)
    assert [rr.route(Turn(session=0, prompt_tokens=1), loads) for _ in range(6)] == [
        0,
        1,
        2,
        3,
        0,
        1,
    ]
    ll = make_router("least-loaded", replicas=4, preset=small_preset)
    assert ll.route(Turn(session=0, prompt_tokens=1), loads) == 3  # tokens, then turns
    cache = make_router("cache-aware", replicas=4, preset=small_preset)
    assert cache.route(Turn(session=0, prompt_tokens=1, home=0, held={0: 800}), loads) == 0
    assert cache.route(Turn(session=0, prompt_tokens=1, home=0, held=None), loads) == 3
    spread = {session_hash(s, 16) for s in range(400)}
    assert spread == set(range(16))
    assert [session_hash(s, 7) for s in range(20)] == [session_hash(s, 7) for s in range(20)]
    with pytest.raises(UnknownNameError, match="round-robin"):
        make_router("random", replicas=2, preset=small_preset)
    with pytest.raises(ValueError, match="bad option"):
        make_router("round-robin", replicas=2, preset=small_preset, spill_threshold=0.5)
    with pytest.raises(ValueError, match="at least 1"):
        make_router("least-loaded", replicas=0, preset=small_preset)


# -- nothing lost, nothing leaked, same every time ---------------------------------------------
@pytest.mark.parametrize(
    ("routing", "policy"),
    [(name, "lamps") for name in ROUTERS.names()]
    + [("round-robin", "infercept"), ("round-robin", "vllm")],
)
def test_no_request_lost_and_every_block_free_after_moves(
    routing: str, policy: str, small_preset: Preset, workload: list[Arrival]
) -> None:
    fleet, result = _run(small_preset, workload, replicas=3, routing=routing, policy=policy)
    s = result.summary
    assert s.num_requests + s.rejected == len(workload)
    assert [m.request_id for m in result.run.requests] == sorted(
        {m.request_id for m in result.run.requests}
    )
    assert sum(r.finished for r in result.replicas) == s.num_requests
    for sched in fleet.schedulers:
        memory = sched.memory
        assert memory.free_gpu_blocks == memory.num_gpu_blocks
        assert memory.free_host_blocks == memory.num_host_blocks
        assert not sched.paused and not sched.running and not sched.waiting
    assert all(load.requests == 0 and load.tokens == 0 for load in fleet.loads)
    for rid, turns in result.placements.items():
        program = workload[rid].program
        assert len(turns) == len(program.segments)
    assert sum(r.turns for r in result.replicas) == sum(len(t) for t in result.placements.values())


def test_same_inputs_same_fleet_run(small_preset: Preset, workload: list[Arrival]) -> None:
    for routing in ("least-loaded", "affinity-spill"):
        _, a = _run(small_preset, workload, replicas=4, routing=routing)
        _, b = _run(small_preset, workload, replicas=4, routing=routing)
        assert a == b


def test_replicas_do_not_wait_for_each_other(small_preset: Preset) -> None:
    """Two programs at once on two replicas finish as soon as one program alone does."""
    program = make_program("p", [(50, 0.0, 0)], prompt=3000)
    alone = _run(small_preset, [Arrival(0.5, program)], replicas=1, routing="least-loaded")[1]
    both = [Arrival(0.5, program), Arrival(0.5, program)]
    pair = _run(small_preset, both, replicas=2, routing="least-loaded")[1]
    assert {m.e2e for m in pair.run.requests} == {alone.run.requests[0].e2e}
    assert sorted(t[0] for t in pair.placements.values()) == [0, 1]


class _ClosedUntil(LampsPolicy):
    """LAMPS behind a gate that admits nothing before ``OPENS`` seconds: work that cannot
    advance, with nothing running (what a gating policy can cause)."""

    OPENS = 5.0
    gates_admission = True

    def admission_gate(self, *, shares: TenantShares | None = None) -> AdmissionGate | None:
        view = self.view

        class Gate:
            exhausted = view.now < _ClosedUntil.OPENS
            closes_tenant = False

            def allow(self, req: Request) -> bool:
                return view.now >= _ClosedUntil.OPENS

        return Gate()


def test_a_stalled_replica_wakes_at_the_next_event_anywhere_as_the_simulator_jumps() -> None:
    preset = load_preset("a100-gptj6b")
    big = make_program("big", [(20, 0.0, 0)], prompt=3000)
    small = make_program("small", [(20, 0.0, 0)], prompt=100)
    arrivals = [Arrival(0.1, big), Arrival(3.0, small), Arrival(6.0, small)]

    def gated() -> Policy:
        return _ClosedUntil(predictor=make_predictor("oracle"), preset=preset)

    alone = Simulator(preset=preset, policy=gated(), arrivals=arrivals).run(LABELS)
    router = make_router("least-loaded", replicas=1, preset=preset)
    one = Fleet(preset=preset, policies=[gated()], router=router, arrivals=arrivals).run(LABELS)
    assert one.summary == alone.summary and one.run.requests == alone.requests
    # Two replicas: the big program stalls on replica 0; every later arrival goes to replica 1
    # (least loaded), yet replica 0 wakes at each event and admits at the first after opening.
    router = make_router("least-loaded", replicas=2, preset=preset)
    fleet = Fleet(preset=preset, policies=[gated(), gated()], router=router, arrivals=arrivals)
    two = fleet.run(LABELS)
    assert two.placements == {0: (0,), 1: (1,), 2: (1,)}
    waits = [m.max_queue_wait for m in two.run.requests]
    assert waits == pytest.approx([6.0 - 0.1, 6.0 - 3.0, 0.0])  # the gate opened at 5 s
    assert waits == pytest.approx([m.max_queue_wait for m in alone.requests])


def test_fleet_checks_its_inputs(small_preset: Preset, workload: list[Arrival]) -> None:
    predictor = make_predictor("oracle")
    shared = make_policy("lamps", predictor=predictor, preset=small_preset)
    router = make_router("round-robin", replicas=2, preset=small_preset)
    with pytest.raises(ValueError, match="own policy"):
        Fleet(preset=small_preset, policies=[shared, shared], router=router, arrivals=workload)
    other = make_policy("lamps", predictor=predictor, preset=small_preset)
    with pytest.raises(ValueError, match="built for 2 replicas"):
        Fleet(
            preset=small_preset,
            policies=[
                shared,
                other,
                make_policy("lamps", predictor=predictor, preset=small_preset),
            ],
            router=router,
            arrivals=workload,
        )


# -- the scheduler hook a move uses ------------------------------------------------------------
def _paused_request(small_preset: Preset, strategy: KVStrategy) -> tuple[Scheduler, Request]:
    policy = make_policy("vllm", predictor=make_predictor("oracle"), preset=small_preset)
    sched = Scheduler(preset=small_preset, policy=policy)
    program = make_program("p", [(10, 5.0, 20), (10, 0.0, 0)], prompt=300)
    req = Request(request_id=1, program=program, arrival_time=0.0)
    sched.add_request(req)
    while req.state is not RequestState.DECODING or req.generated < 9:
        out = sched.schedule()
        sched.update_from_output(out, step_time=0.01)
    req.strategy = strategy
    sched.policy.on_pause = lambda paused: strategy  # type: ignore[method-assign]
    out = sched.schedule()
    sched.update_from_output(out, step_time=0.01)
    assert req.is_paused
    return sched, req


@pytest.mark.parametrize("strategy", [KVStrategy.PRESERVE, KVStrategy.SWAP, KVStrategy.DISCARD])
def test_release_paused_drops_what_the_session_holds(
    strategy: KVStrategy, small_preset: Preset
) -> None:
    sched, req = _paused_request(small_preset, strategy)
    held = req.kv_tokens
    before = sched.counters.recomputed_tokens
    dropped = sched.release_paused(req)
    assert req.state is RequestState.PAUSED_DISCARDED
    memory: KVMemory = sched.memory
    assert memory.free_gpu_blocks == memory.num_gpu_blocks
    assert memory.free_host_blocks == memory.num_host_blocks
    assert req.kv_tokens == 0 and req.gpu_blocks == 0 and req.host_blocks == 0
    if strategy is KVStrategy.DISCARD:
        assert dropped == 0 and sched.counters.recomputed_tokens == before
    else:
        # 300 + 10 generated, the last without KV; a pin and a swap keep its full 16-token
        # blocks (the swap store copies whole blocks, as vLLM's prefix cache hashes them)
        assert dropped == held == 304
        # counted as recomputed when (and where) the next turn computes it again
        assert sched.counters.recomputed_tokens == before
        assert req.request_id not in sched.paused
    with pytest.raises(ValueError, match="not paused"):
        sched.release_paused(Request(request_id=9, program=req.program, arrival_time=0.0))


# -- the command ---------------------------------------------------------------------------------
def test_fleet_command_writes_a_row_per_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.json"
    args = ["fleet", "--synthetic", "10", "--set", "gpu_kv_gb=4", "--replicas", "1,2"]
    args += ["--routing", "round-robin,session-affinity", "--qps-per-replica", "2"]
    assert main([*args, "--duration", "5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["replicas"], r["routing"]) for r in rows] == [
        (1, "round-robin"),
        (1, "session-affinity"),
        (2, "round-robin"),
        (2, "session-affinity"),
    ]
    assert rows[0]["programs"] == rows[1]["programs"] and rows[0]["e2e_mean"] == rows[1]["e2e_mean"]
    assert rows[3]["moves"] == 0 and rows[2]["moves"] > 0
    assert "session-affinity" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--routing", "random", "--routing: unknown routing policy 'random'"),
        ("--replicas", "0", "--replicas: 0 must be at least 1"),
        ("--qps-per-replica", "x", "--qps-per-replica: 'x' is not a number"),
        ("--policy", "lamps,vllm", "--policy: give one"),
    ],
)
def test_fleet_command_bad_input_is_one_line(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "--synthetic", "4", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
