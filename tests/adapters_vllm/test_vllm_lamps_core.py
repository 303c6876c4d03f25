"""The plug-in's state (``LampsCore``) built and driven without vLLM: fakes stand in for vLLM's
scheduler, block pool and requests, with the attributes the plug-in reads — as the plug-in is
driven inside vLLM: a session's turn arrives, vLLM takes it from the plug-in's queue, the turn
ends in a tool call (its KV pinned), the next turn arrives (the core hears the tool's return) and
is admitted (the pin released)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.vllm.config import PluginConfig
from adapters.vllm.lamps_core import LampsCore
from lamps_agent.hints import LampsHints
from lamps_agent.predictors import PredictionQuery
from lamps_agent.predictors.calibrated import CalibratedPredictor
from lamps_agent.request import KVStrategy

BLOCK = 16


class Status(enum.Enum):  # the names the plug-in reads of vLLM's RequestStatus
    WAITING = 0
    RUNNING = 1
    FINISHED_STOPPED = 2


@dataclass(eq=False)
class FakeRequest:
    request_id: str
    num_prompt_tokens: int
    extra_args: dict[str, Any]
    session_id: str | None = None
    priority: int = 0
    arrival_time: float = 0.0
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    status: Status = Status.WAITING
    sampling_params: Any = None

    def __post_init__(self) -> None:
        self.sampling_params = SimpleNamespace(extra_args=self.extra_args, max_tokens=64)


@dataclass
class FakePool:
    num_gpu_blocks: int = 200
    free: int = 199
    touched: list[Any] = field(default_factory=list)
    freed: list[Any] = field(default_factory=list)

    def get_num_free_blocks(self) -> int:
        return self.free

    def touch(self, blocks: Any) -> None:
        self.touched.extend(blocks)

    def free_blocks(self, blocks: Any) -> None:
        self.freed.extend(blocks)


def fake_vllm_scheduler() -> Any:
    pool = FakePool()
    blocks: dict[str, list[Any]] = {}
    manager = SimpleNamespace(
        block_pool=pool,
        allocate_slots=lambda request, *a, **k: object(),
        get_blocks=lambda rid: SimpleNamespace(blocks=[blocks.get(rid, [])]),
    )
    return SimpleNamespace(
        kv_cache_manager=manager,
        cache_config=SimpleNamespace(block_size=BLOCK),
        scheduler_config=SimpleNamespace(policy="fcfs"),
        max_model_len=4096,
        running=[],
        requests={},
        blocks=blocks,
    )


def turn(
    rid: str, prompt: int, *, step: int, tool: str | None, tenant: str | None = None,
    claimed: int = 10,
) -> FakeRequest:  # fmt: skip
    hints = LampsHints(
        session_id="s", priority=0, agent="test", step=step, output_tokens=claimed, tool=tool,
        tool_duration=5.0 if tool else 0.0,
        kv_strategy=KVStrategy.PRESERVE if tool else KVStrategy.DISCARD, tenant=tenant,
    )  # fmt: skip
    return FakeRequest(rid, prompt, hints.to_xargs(), session_id="s")


def run_turn(lamps: LampsCore, sched: Any, request: FakeRequest) -> None:
    """vLLM's side: add, one step that takes it from the queue, run it to its end, free it."""
    lamps.on_add(request)
    lamps.queue.add_request(request)
    lamps.before_schedule()
    assert lamps.queue.pop_request() is request
    request.status = Status.RUNNING
    sched.running.append(request)
    lamps.after_schedule(SimpleNamespace(scheduled_new_reqs=[]))
    request.num_computed_tokens = request.num_prompt_tokens + 10
    request.num_output_tokens = 10
    request.status = Status.FINISHED_STOPPED
    sched.running.remove(request)
    sched.blocks[request.request_id] = [
        SimpleNamespace(block_hash=i, is_null=False)
        for i in range(request.num_computed_tokens // BLOCK)
    ]
    lamps.on_free(request)


def test_a_sessions_turns_through_the_plugin_state_without_vllm() -> None:
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="lamps", client_strategy="obey"))
    first = turn("r1", 100, step=0, tool="search")
    run_turn(lamps, sched, first)
    assert lamps.decisions.preserve == 1 and "s" in lamps.pins.pins
    assert len(sched.kv_cache_manager.block_pool.touched) == 110 // BLOCK  # the pin's references
    core = lamps.away["s"].core

    second = turn("r2", 130, step=1, tool=None)
    run_turn(lamps, sched, second)
    assert lamps.tracked == {} and "s" not in lamps.away
    assert core.seg_index == 1 and core.program.segments[0].returned_tokens == 20
    stats = lamps.stats()
    assert stats["pins"]["released"] == {"admitted": 1} and stats["pins_active"] == 0
    assert stats["decisions"]["finished"] == 1 and stats["errors"] == 0
    assert len(sched.kv_cache_manager.block_pool.freed) == 110 // BLOCK


def test_the_hinted_tenant_is_the_core_programs_tenant() -> None:
    """The core's fair share (lamps_agent.scheduler.fair_share) reads Program.tenant: on vLLM it
    is the tenant the client hinted."""
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="lamps", client_strategy="obey"))
    run_turn(lamps, sched, turn("r1", 100, step=0, tool="search", tenant="acme"))
    assert lamps.away["s"].core.program.tenant == "acme"
    assert lamps.core.fair_share is not None  # on by default, as in the simulator


def test_the_plugin_state_needs_no_vllm(tmp_path: Any) -> None:
    """The test above, run again with every ``vllm`` import refused."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "run.py"
    script.write_text(
        "import importlib.abc, sys\n"
        "class Refuse(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'vllm' or name.startswith('vllm.'):\n"
        "            raise ImportError('vllm refused')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import pytest\n"
        f"sys.exit(pytest.main([{str(Path(__file__))!r}, '-q', '-p', 'no:cacheprovider',\n"
        "    '-k', 'without_vllm']))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_the_tools_time_runs_until_the_next_turn_reached_the_server() -> None:
    """The core hears the gap from the turn's end to the next turn's arrival (vLLM's
    ``arrival_time``), not to the step that saw it: a step in progress is not the tool's time,
    and the simulator's gap is the tool's."""
    now = [1.0]
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="lamps", client_strategy="obey"),
                      clock=lambda: now[0])  # fmt: skip
    run_turn(lamps, sched, turn("r1", 100, step=0, tool="search"))  # ends at t = 1
    core = lamps.away["s"].core
    second = turn("r2", 130, step=1, tool=None)
    second.arrival_time = 3.0
    now[0] = 3.5  # the step in progress when it arrived ended later
    run_turn(lamps, sched, second)
    assert core.program.segments[0].tool_duration == 2.0


def test_the_core_sees_the_blocks_requests_can_hold_and_the_engines_longest_context() -> None:
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="program", client_strategy="obey"))
    pool = sched.kv_cache_manager.block_pool
    assert lamps.core.memory.num_gpu_blocks == pool.num_gpu_blocks - 1  # less the null block
    assert lamps.policy.max_context == 4096  # vLLM's max_model_len, through the preset


def test_the_walk_reads_the_free_blocks_left_after_the_running_requests_took_theirs() -> None:
    """vLLM walks its waiting queue after this step's running requests took their blocks: the
    walk (and a gate's look at memory) starts from the pool as it stands then."""
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="lamps", client_strategy="obey"))
    request = turn("r1", 100, step=0, tool="search")
    lamps.on_add(request)
    lamps.queue.add_request(request)
    lamps.before_schedule()
    pool = sched.kv_cache_manager.block_pool
    assert lamps.core.memory.free_gpu_blocks == pool.free
    pool.free -= 7  # the running requests' new blocks this step
    assert lamps.queue.pop_request() is request
    assert lamps.core.memory.free_gpu_blocks == pool.free


def test_a_clients_hints_are_discounted_by_what_its_turns_then_did() -> None:
    """The calibration runs in the plug-in as in the simulator: a session that claimed 1 token
    and wrote 10 has its next claim scaled by that ratio; with calibrate off it stands."""
    for calibrate, discounted in ((True, 1), (False, 0)):
        sched = fake_vllm_scheduler()
        config = PluginConfig(policy="lamps", client_strategy="obey", calibrate=calibrate)
        lamps = LampsCore(sched, config)
        run_turn(lamps, sched, turn("r1", 100, step=0, tool="search", claimed=1))  # wrote 10
        second = turn("r2", 130, step=1, tool="search", claimed=1)
        lamps.on_add(second)
        stats = lamps.stats()
        assert stats["hints_discounted"] == discounted
        assert stats["tenant_hints_discounted"] == ({"(none)": 1} if calibrate else {})
        prediction = lamps.tracked["r2"].core.prediction
        assert prediction is not None and (prediction.output_tokens > 1) is calibrate


def test_a_session_that_comes_back_after_a_final_claim_is_caught_lying() -> None:
    """The served path learns a final claim was false only when the session's next turn
    arrives: the calibration hears it then, and the tenant's next final claim is read as a
    tool call.  Another tenant's claims stand."""
    sched = fake_vllm_scheduler()
    lamps = LampsCore(sched, PluginConfig(policy="lamps", client_strategy="obey"))
    run_turn(lamps, sched, turn("r1", 100, step=0, tool=None, tenant="liar", claimed=10))
    assert lamps.stats()["tenant_hints_discounted"] == {}
    second = turn("r2", 130, step=1, tool=None, tenant="liar", claimed=10)
    lamps.on_add(second)  # the comeback: the first claim was false, and this one is doubted
    prediction = lamps.tracked["r2"].core.prediction
    assert prediction is not None and prediction.tool is not None
    assert lamps.stats()["tenant_hints_discounted"] == {"liar": 1}
    calibrated = lamps.predictor
    assert isinstance(calibrated, CalibratedPredictor)
    query = PredictionQuery(agent="test", step=0, tool=None, prompt_tokens=10, tenant="other")
    assert calibrated.trusted(query)


def test_boolean_settings_read_from_the_environment() -> None:
    assert PluginConfig.load(environ={"LAMPS_CALIBRATE": "false"}).calibrate is False
    assert PluginConfig.load(environ={"LAMPS_CALIBRATE": "on"}).calibrate is True
    with pytest.raises(ValueError, match="not a boolean"):
        PluginConfig.load(environ={"LAMPS_CALIBRATE": "maybe"})
