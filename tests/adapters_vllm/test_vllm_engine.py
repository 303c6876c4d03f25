"""The plug-in inside a real (CPU, tiny-model) vLLM engine: ranking, preserve, swap, discard, TTL,
abort, malformed hints, and no block leaks."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from lamps_agent.request import KVStrategy
from tests.adapters_vllm.conftest import (
    Tokens,
    admissions,
    assert_no_leak,
    generate,
    hints,
    press,
    scheduler_of,
    two_turns,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def stock(engine_factory: Any) -> Any:
    return engine_factory(None)


@pytest.fixture(scope="module")
def lamps(engine_factory: Any) -> Any:
    return engine_factory("lamps", ttl_slack=0.0, client_strategy="obey")


def test_the_plugin_is_loaded(lamps: Any) -> None:
    sched = scheduler_of(lamps)
    assert type(sched).__name__ == "LampsScheduler"
    assert type(sched.waiting).__name__ == "LampsRequestQueue"
    assert sched.lamps_stats()["policy"] == "lamps"


def test_preserve_keeps_the_prefix_where_stock_vllm_loses_it(stock: Any, lamps: Any) -> None:
    _, stock_out = two_turns(stock, Tokens(1), "s-stock", KVStrategy.PRESERVE)
    p2, lamps_out = two_turns(lamps, Tokens(1), "s-preserve", KVStrategy.PRESERVE)
    assert stock_out.num_cached_tokens == 0  # evicted by the other sessions
    assert lamps_out.num_cached_tokens == (len(p2) - 10) // 32 * 32  # every full block of turn 1
    stats = scheduler_of(lamps).lamps_stats()
    assert stats["pins"]["released"].get("admitted", 0) >= 1 and stats["pins_active"] == 0


def test_discard_recomputes(lamps: Any) -> None:
    _, out = two_turns(lamps, Tokens(2), "s-discard", KVStrategy.DISCARD)
    assert out.num_cached_tokens == 0


def test_ranking_follows_the_lamps_key(lamps: Any) -> None:
    """Requests submitted together are admitted smallest predicted memory × time first."""
    from vllm import SamplingParams

    tokens = Tokens(4)
    outputs = [400, 10, 200, 50]  # predicted outputs; equal prompts -> area grows with output
    prompts = [{"prompt_token_ids": tokens(300)} for _ in outputs]
    params = [
        SamplingParams(max_tokens=5, ignore_eos=True, temperature=0.0,
                       extra_args=hints(f"rank-{i}", 0, tool=None, duration=0.0, strategy=KVStrategy.DISCARD, output=o))
        for i, o in enumerate(outputs)
    ]  # fmt: skip
    with admissions(lamps) as admitted:
        results = lamps.generate(prompts, params, use_tqdm=False)
    position = {r.request_id: i for i, r in enumerate(results)}
    # the engine appends a suffix to each request id: "<id>-<random>"
    ranked = [position[a.split("-")[0]] for a in admitted if a.split("-")[0] in position]
    assert ranked == sorted(range(len(outputs)), key=lambda i: outputs[i])


def test_ttl_expiry_releases_the_pin(lamps: Any) -> None:
    sched = scheduler_of(lamps)
    tokens = Tokens(5)
    free0 = sched.kv_cache_manager.block_pool.get_num_free_blocks()
    generate(
        lamps,
        tokens(600),
        max_tokens=10,
        xargs=hints("s-ttl", 0, tool="search", duration=0.05, strategy=KVStrategy.PRESERVE),
    )
    assert "s-ttl" in sched.lamps.pins.pins
    time.sleep(0.2)  # ttl = 1.5 x 0.05 s with no slack
    generate(lamps, tokens(40), max_tokens=2)  # any step expires it
    assert "s-ttl" not in sched.lamps.pins.pins
    assert sched.lamps_stats()["pins"]["released"].get("ttl", 0) >= 1
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == free0


def test_pins_expire_on_an_idle_engine(lamps: Any) -> None:
    """No request after the pin: vLLM never schedules, the plug-in's housekeeping expires it."""
    sched = scheduler_of(lamps)
    pool = sched.kv_cache_manager.block_pool
    free0 = pool.get_num_free_blocks()
    generate(
        lamps,
        Tokens(15)(600),
        max_tokens=10,
        xargs=hints("s-idle", 0, tool="search", duration=0.1, strategy=KVStrategy.PRESERVE),
    )
    assert "s-idle" in sched.lamps.pins.pins and pool.get_num_free_blocks() < free0
    deadline = time.monotonic() + 5.0
    while "s-idle" in sched.lamps.pins.pins and time.monotonic() < deadline:
        time.sleep(0.1)  # the engine is idle: nothing calls the scheduler
    assert "s-idle" not in sched.lamps.pins.pins
    assert pool.get_num_free_blocks() == free0


def test_abort_releases_the_sessions_pin(lamps: Any) -> None:
    from vllm import SamplingParams

    sched = scheduler_of(lamps)
    tokens = Tokens(6)
    p1 = tokens(600)
    out1 = generate(
        lamps,
        p1,
        max_tokens=10,
        xargs=hints("s-abort", 0, tool="search", duration=30.0, strategy=KVStrategy.PRESERVE),
    )
    assert "s-abort" in sched.lamps.pins.pins
    engine = lamps.llm_engine
    p2 = p1 + list(out1.outputs[0].token_ids) + tokens(50)  # the next turn extends the context
    engine.add_request("cont", {"prompt_token_ids": p2},
                       SamplingParams(max_tokens=50, extra_args=hints("s-abort", 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD)))  # fmt: skip
    engine.abort_request(["cont"])  # the client went away before the next turn ran
    assert "s-abort" not in sched.lamps.pins.pins
    assert sched.lamps_stats()["pins"]["released"].get("abort", 0) >= 1
    assert not engine.has_unfinished_requests()


def test_a_next_turn_that_rewrites_the_context_drops_the_pin_at_once(lamps: Any) -> None:
    """A session whose next prompt does not extend its context (the client rewrote it) starts
    afresh: its pin cannot serve the new prompt and is released when the turn arrives."""
    sched = scheduler_of(lamps)
    tokens = Tokens(12)
    generate(lamps, tokens(300), max_tokens=10, xargs=hints(
        "s-rewrite", 0, tool="search", duration=30.0, strategy=KVStrategy.PRESERVE))  # fmt: skip
    assert "s-rewrite" in sched.lamps.pins.pins
    generate(lamps, tokens(40), max_tokens=5, xargs=hints(
        "s-rewrite", 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD))  # fmt: skip
    assert "s-rewrite" not in sched.lamps.pins.pins
    assert sched.lamps_stats()["pins"]["released"].get("rewritten", 0) >= 1


def test_a_waiting_turn_counts_its_pinned_kv_as_resident(lamps: Any) -> None:
    """The session's next turn waits with its pinned prefix resident, as in the simulator: only
    its new tokens are prefill to place (a gate that waited for room for the whole context would
    count the pinned blocks twice).  When the pin goes, so does the credit."""
    from vllm import SamplingParams

    sched = scheduler_of(lamps)
    tokens = Tokens(9)
    p1 = tokens(600)
    out = generate(
        lamps,
        p1,
        max_tokens=10,
        xargs=hints("s-credit", 0, tool="search", duration=30.0, strategy=KVStrategy.PRESERVE),
    )
    pinned = len(sched.lamps.pins.pins["s-credit"]) * 32
    assert pinned >= 576
    p2 = p1 + list(out.outputs[0].token_ids) + tokens(50)
    engine = lamps.llm_engine
    try:  # no engine step runs here: the turn stays waiting
        engine.add_request("credit-next", {"prompt_token_ids": p2},
                           SamplingParams(max_tokens=2, extra_args=hints("s-credit", 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD)))  # fmt: skip
        (waiting,) = [
            t.core for t in sched.lamps.tracked.values() if t.info.session_id == "s-credit"
        ]
        assert waiting.kv_tokens == pinned
        assert waiting.remaining_prefill == len(p2) - pinned
        paused = sched.lamps.core.pin_to_release()
        assert paused is not None and paused.key == "s-credit"
        sched.lamps._release(paused, "pressure")
        assert waiting.kv_tokens == 0 and waiting.remaining_prefill == len(p2)
    finally:
        engine.abort_request(["credit-next"])
    assert not engine.has_unfinished_requests()
    assert "s-credit" not in sched.lamps.pins.pins


@pytest.mark.parametrize(
    "garbage",
    [
        {"lamps_hint_version": 1, "lamps_output_tokens": "many"},
        {"lamps_hint_version": 99},
        {
            "lamps_hint_version": 1,
            "lamps_session_id": "x",
            "lamps_priority": 0,
            "lamps_agent": "a",
            "lamps_step": 0,
            "lamps_output_tokens": 10,
            "lamps_tool": "t",
            "lamps_tool_duration": math.nan,
            "lamps_kv_strategy": "preserve",
        },
        {
            "lamps_hint_version": 1,
            "lamps_session_id": "x",
            "lamps_priority": 0,
            "lamps_agent": "a",
            "lamps_step": 0,
            "lamps_output_tokens": -5,
            "lamps_tool": "t",
            "lamps_tool_duration": 1.0,
            "lamps_kv_strategy": "preserve",
        },
        {
            "lamps_hint_version": 1,
            "lamps_session_id": "x",
            "lamps_priority": 0,
            "lamps_agent": "a",
            "lamps_step": 0,
            "lamps_output_tokens": 10**12,
            "lamps_tool": "t",
            "lamps_tool_duration": 1e300,
            "lamps_kv_strategy": "teleport",
        },
        {"lamps_hint_version": 1, "lamps_session_id": ["not", "a", "string"]},
    ],
)
def test_malformed_hints_never_crash_or_stall(lamps: Any, garbage: dict[str, Any]) -> None:
    sched = scheduler_of(lamps)
    before = sched.lamps_stats()["hints"]["malformed"]
    out = generate(lamps, Tokens(7)(100), max_tokens=8, xargs=garbage)
    assert len(out.outputs[0].token_ids) == 8
    assert sched.lamps_stats()["hints"]["malformed"] == before + 1
    assert sched.lamps_stats()["errors"] == 0


def test_no_block_leaks_after_every_session_ended(stock: Any, lamps: Any) -> None:
    for llm in (stock, lamps):
        assert_no_leak(llm)


def test_async_scheduler_variant_preserves_too(engine_factory: Any) -> None:
    """The variant for vLLM's async scheduling (the default on GPUs) behaves the same."""
    llm = engine_factory("lamps", async_scheduling=True, client_strategy="obey")
    sched = scheduler_of(llm)
    assert type(sched).__name__ == "LampsAsyncScheduler"
    p2, out = two_turns(llm, Tokens(8), "s-async", KVStrategy.PRESERVE)
    assert out.num_cached_tokens == (len(p2) - 10) // 32 * 32
    assert_no_leak(llm)


def test_a_sessions_next_turn_is_its_tools_return_to_the_core(lamps: Any) -> None:
    """The plug-in does not start a new core request for a session's next turn: the core hears
    that the paused turn's tool returned (Scheduler.tool_returned, with the real output, gap and
    returned tokens) and the same core request goes on, as in the simulator."""
    sched = scheduler_of(lamps)
    core = sched.lamps.core
    heard: list[Any] = []
    original = core.tool_returned

    def spy(req: Any, outcome: Any, **kw: Any) -> None:
        heard.append((req, outcome))
        original(req, outcome, **kw)

    core.tool_returned = spy
    try:
        tokens = Tokens(11)
        p1 = tokens(200)
        first = generate(lamps, p1, max_tokens=10, xargs=hints(
            "s-return", 0, tool="search", duration=0.2, strategy=KVStrategy.PRESERVE))  # fmt: skip
        away = sched.lamps.away["s-return"]
        time.sleep(0.2)
        p2 = p1 + list(first.outputs[0].token_ids) + tokens(30)
        generate(lamps, p2, max_tokens=5, xargs=hints(
            "s-return", 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD))  # fmt: skip
    finally:
        core.tool_returned = original
    assert len(heard) == 1
    req, outcome = heard[0]
    assert req is away.core and req.seg_index == 1
    assert outcome.output_tokens == 10 and outcome.tool == "search"
    assert outcome.returned_tokens == 30 and outcome.tool_duration >= 0.2
    assert req.program.segments[1].prompt_tokens == len(p2)
    assert "s-return" not in sched.lamps.away  # its last turn finished the program


def _run_with_envelope(llm: Any, rid: str, prompt: list[int], envelope: Any) -> Any:
    """One request through vLLM's engine API with its hints in the KV-hint envelope only."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(max_tokens=20, ignore_eos=True, temperature=0.0)
    engine.add_request(rid, {"prompt_token_ids": prompt}, params, kv_hints=envelope)
    while True:
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return out


def test_hints_in_the_kv_hint_envelope_drive_the_plugin(lamps: Any) -> None:
    """vLLM's typed envelope (``kv_hints=``) carries the same hints as ``extra_args``: the turn's
    KV is preserved through its tool call, and the next turn finds it."""
    from adapters.vllm.envelope import kv_hints_envelope
    from lamps_agent.hints import LampsHints

    sched = scheduler_of(lamps)
    ok = sched.lamps_stats()["hints"]["ok"]
    tokens = Tokens(11)
    turn = dict(session_id="s-envelope", priority=0, agent="test", output_tokens=20)
    p1 = tokens(600)
    first = LampsHints(**turn, step=0, tool="search", tool_duration=5.0,
                       kv_strategy=KVStrategy.PRESERVE)  # fmt: skip
    out1 = _run_with_envelope(lamps, "env-1", p1, kv_hints_envelope(first))
    assert "s-envelope" in sched.lamps.pins.pins  # the envelope's hint was read: kept
    press(lamps, tokens)
    p2 = p1 + list(out1.outputs[0].token_ids) + tokens(10)
    last = LampsHints(**turn, step=1, tool=None, tool_duration=0.0,
                      kv_strategy=KVStrategy.DISCARD)  # fmt: skip
    out2 = _run_with_envelope(lamps, "env-2", p2, kv_hints_envelope(last))
    assert out2.num_cached_tokens == (len(p2) - 10) // 32 * 32  # every full block of turn 1
    assert sched.lamps_stats()["hints"]["ok"] == ok + 2
    assert_no_leak(lamps)
