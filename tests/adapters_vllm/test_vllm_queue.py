"""The waiting queue the plug-in installs in vLLM: a view of the core scheduler's queue (order,
starvation, admission gate) behind vLLM's RequestQueue contract."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytestmark = pytest.mark.vllm

from adapters.vllm.queue import LampsRequestQueue  # noqa: E402
from lamps_agent.policies import make_policy  # noqa: E402
from lamps_agent.predictors import OraclePredictor  # noqa: E402
from lamps_agent.presets import load_preset  # noqa: E402
from lamps_agent.program import Program, Segment  # noqa: E402
from lamps_agent.request import Request as CoreRequest  # noqa: E402
from lamps_agent.scheduler import Scheduler  # noqa: E402


@dataclass(eq=False)  # hashable by identity, like vLLM's Request
class FakeRequest:
    request_id: str


class Harness:
    def __init__(self, policy: str, *, priority: bool = False, **options: object) -> None:
        preset = load_preset("h100-llama3-8b")
        self.sched = Scheduler(
            preset=preset,
            policy=make_policy(policy, predictor=OraclePredictor(), preset=preset, **options),
            priority_scheduling=priority,
        )
        self.core: dict[str, CoreRequest] = {}
        self.queue = LampsRequestQueue(
            scheduler=self.sched, core_of=lambda r: self.core.get(r.request_id)
        )

    def add(self, rid: str, output: int, arrival: float = 0.0, priority: int = 0) -> FakeRequest:
        seg = Segment(prompt_tokens=100, output_tokens=output)
        core = CoreRequest(
            request_id=len(self.core),
            program=Program(program_id=rid, agent="a", segments=(seg,)),
            arrival_time=arrival,
            priority=priority,
        )
        self.core[rid] = core
        self.sched.add_request(core)
        request = FakeRequest(rid)
        self.queue.add_request(request)  # type: ignore[arg-type]
        return request


def ids(q: LampsRequestQueue) -> list[str]:
    return [r.request_id for r in q]


def test_orders_by_the_policys_key() -> None:
    h = Harness("sjf")  # key: predicted output
    for rid, out in (("a", 300), ("b", 10), ("c", 50)):
        h.add(rid, out)
    h.queue.new_step()
    assert ids(h.queue) == ["b", "c", "a"]
    assert h.queue.peek_request().request_id == "b"


def test_a_skipped_request_goes_back_where_it_stood_and_a_kept_one_is_admitted() -> None:
    h = Harness("sjf")
    for rid, out in (("a", 300), ("b", 10), ("c", 50)):
        h.add(rid, out)
    h.queue.new_step()
    b = h.queue.pop_request()
    c = h.queue.pop_request()
    h.queue.prepend_requests([c])  # vLLM could not fit it this step
    admitted = h.queue.end_step()
    assert [r.program.program_id for r in admitted] == ["b"] and b.request_id == "b"
    assert h.core["b"] in h.sched.running
    assert ids(h.queue) == ["c", "a"] and len(h.queue) == 2


def test_a_preempted_request_keeps_its_key() -> None:
    h = Harness("sjf")
    big = h.add("big", 300)
    h.add("small", 10)
    h.queue.new_step()
    h.queue.pop_request(), h.queue.pop_request()
    h.queue.end_step()
    h.queue.prepend_request(big)  # vLLM preempted it: back by its key, behind nobody smaller
    h.add("mid", 50)
    assert ids(h.queue) == ["mid", "big"]
    assert h.sched.counters.preemptions == 1


def test_starved_requests_lead_oldest_first() -> None:
    h = Harness("lamps", starvation_threshold=5)
    h.add("big", 1500)
    h.sched.iteration = 3
    h.add("small", 5)
    h.queue.new_step()
    assert h.queue.peek_request().request_id == "small"
    h.sched.iteration = 5
    h.queue.new_step()
    assert h.queue.peek_request().request_id == "big"


def test_the_admission_gate_holds_requests_without_hiding_them_from_the_engine() -> None:
    """WAIT with the engine busy: only the fluid quota is admissible; the rest stay counted by
    len(), so the engine keeps stepping, and are admitted within the policy's bound (patience)."""
    h = Harness("wait", patience=3)
    running = h.add("running", 10)
    h.queue.new_step()
    assert h.queue.pop_request() is running  # an idle engine admits whatever waits
    h.queue.end_step()
    for i in range(3):
        h.add(f"w{i}", 500)
    h.sched.sync_view()
    h.queue.new_step()
    popped = 0
    while h.queue:
        h.queue.pop_request()
        popped += 1
    h.queue.end_step()
    assert popped == 2 and len(h.queue) == 1  # the fluid quota is 2: one held, still counted
    held_steps = 0
    while True:
        h.sched.iteration += 1
        h.sched.sync_view()
        h.queue.new_step()
        if h.queue:
            break
        held_steps += 1
    assert 1 <= held_steps <= 3  # held, then admitted within the stated bound (patience)


def test_empty_queue_raises_index_error() -> None:
    h = Harness("vllm")
    h.queue.new_step()
    assert not h.queue
    with pytest.raises(IndexError):
        h.queue.pop_request()
    with pytest.raises(IndexError):
        h.queue.peek_request()


def test_the_queue_is_indexable_in_its_order() -> None:
    """vLLM's FCFS queue is a deque; its own tests index ``scheduler.waiting``."""
    h = Harness("sjf")
    for rid, out in (("a", 300), ("b", 10), ("c", 50)):
        h.add(rid, out)
    assert [h.queue[i].request_id for i in range(3)] == ["b", "c", "a"]
    assert h.queue[-1].request_id == "a" and [r.request_id for r in h.queue[:2]] == ["b", "c"]
    with pytest.raises(IndexError):
        h.queue[3]


def test_priority_scheduling_orders_by_priority_before_the_policys_key() -> None:
    """vLLM's ``--scheduling-policy priority``: lower priority value first, the policy's order
    within a priority (never silently ignored)."""
    h = Harness("vllm", priority=True)
    h.add("late-urgent", 10, arrival=3.0, priority=-1)
    h.add("early", 10, arrival=1.0, priority=0)
    h.add("later", 10, arrival=2.0, priority=0)
    h.add("low", 10, arrival=0.0, priority=5)
    assert ids(h.queue) == ["late-urgent", "early", "later", "low"]
    plain = Harness("vllm")
    plain.add("b", 10, arrival=1.0, priority=-1)
    plain.add("a", 10, arrival=0.0, priority=5)
    assert ids(plain.queue) == ["a", "b"]  # FCFS: priority not asked for, not used


def test_the_walk_is_lazy_so_the_gate_sees_only_what_vllm_takes() -> None:
    """No seat count in the plug-in: vLLM stops pulling when its own limits are reached, and
    the walk (and the admission gate's accounting) stops with it."""
    h = Harness("vllm")
    for i in range(5):
        h.add(f"r{i}", 10, arrival=float(i))
    h.queue.new_step()
    taken = [h.queue.pop_request().request_id for _ in range(2)]  # vLLM had two seats
    admitted = h.queue.end_step()
    assert taken == ["r0", "r1"] and len(admitted) == 2 and len(h.queue) == 3
