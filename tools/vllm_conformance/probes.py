"""Liveness / leak probes for the scenarios of the tests that fail on the plug-in.

A failing vLLM assertion says the plug-in decided differently; it does not say whether a
request was lost or a block leaked.  Each probe replays the failing test's set-up, then drives
the scheduler to the end (a token per scheduled decode, async KV loads completed the step after
they start) and checks: every request finished, nothing left in waiting / kv_holding_waiting /
running, every block back in the free queue with ref_cnt 0, and (plug-in) the core tracks nothing.
It prints the admission order, so the ranking difference is visible.

Usage (run.sh's environment):  python probes.py            # columns stock vllm lamps program
"""

from __future__ import annotations

import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("VLLM_TESTS", os.path.join(HERE, "vllm_tests")))

import tests.v1.core.test_scheduler as T  # noqa: E402
import tests.v1.core.utils as U  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402

ORIG = {"u_sched": U.Scheduler, "u_async": U.AsyncScheduler, "t_sched": T.Scheduler}


def use(column: str) -> None:
    if column == "stock":
        U.Scheduler, U.AsyncScheduler, T.Scheduler = (
            ORIG["u_sched"],
            ORIG["u_async"],
            ORIG["t_sched"],
        )
        return
    os.environ["LAMPS_POLICY"] = column
    from adapters.vllm.scheduler import LampsAsyncScheduler, LampsScheduler

    U.Scheduler, U.AsyncScheduler, T.Scheduler = LampsScheduler, LampsAsyncScheduler, LampsScheduler


def drive(s, max_steps: int = 400) -> list[str]:
    """Run to the end; returns request ids in first-scheduled order."""
    admitted: list[str] = []
    recv_next: set[str] = set()
    for _ in range(max_steps):
        if not s.requests:
            break
        out = s.schedule()
        for r in out.scheduled_new_reqs:
            if r.req_id not in admitted:
                admitted.append(r.req_id)
        ids = list(out.num_scheduled_tokens)
        sampled = []
        for rid in ids:
            req = s.requests[rid]
            done_prefill = req.num_computed_tokens >= req.num_prompt_tokens
            sampled.append([1000] if done_prefill else [])
        # async KV loads started in an earlier step land now
        recv = {
            rid
            for rid in recv_next
            if rid in s.requests
            and s.requests[rid].status == RequestStatus.WAITING_FOR_REMOTE_KVS
            and rid not in s.finished_recving_kv_req_ids
        }
        mro = ModelRunnerOutput(
            req_ids=ids,
            req_id_to_index={rid: i for i, rid in enumerate(ids)},
            sampled_token_ids=sampled,
            kv_connector_output=KVConnectorOutput(finished_recving=recv or None),
        )
        s.update_from_output(out, mro)
        recv_next = {
            rid for rid, r in s.requests.items() if r.status == RequestStatus.WAITING_FOR_REMOTE_KVS
        }
    return admitted


def check_empty(s) -> list[str]:
    bad = []
    if s.requests:
        bad.append(f"{len(s.requests)} requests left: {sorted(s.requests)}")
    if len(s.waiting) or len(s.kv_holding_waiting) or s.running:
        bad.append(
            f"queues not empty: waiting={len(s.waiting)} "
            f"kv_holding={len(s.kv_holding_waiting)} running={len(s.running)}"
        )
    pool = s.kv_cache_manager.block_pool
    free = pool.free_block_queue.num_free_blocks
    if free != pool.num_gpu_blocks - 1:
        bad.append(f"blocks: {free} free of {pool.num_gpu_blocks - 1}")
    held = [b.block_id for b in pool.blocks if b.ref_cnt]
    if held:
        bad.append(f"blocks with ref_cnt>0: {held[:10]}")
    lamps = getattr(s, "lamps", None)
    if lamps is not None:
        if lamps.tracked:
            bad.append(f"plug-in still tracks {sorted(lamps.tracked)}")
        if len(lamps.core.waiting):
            bad.append(f"core waiting queue holds {len(lamps.core.waiting)}")
        if getattr(lamps.pins, "pins", None):
            bad.append(f"pins left: {list(lamps.pins.pins)}")
    return bad


# -- scenarios (set-up copied from the failing tests) -------------------------------------------
def schedule_order(chunked: bool):
    s = U.create_scheduler(
        max_num_batched_tokens=1024, max_num_seqs=3, enable_chunked_prefill=chunked
    )
    reqs = U.create_requests(num_requests=2, num_tokens=800, req_ids=["1", "2"])
    reqs += U.create_requests(num_requests=2, num_tokens=10, req_ids=["3", "4"])
    for r in reqs:
        s.add_request(r)
    return s


def async_load_wedge():
    bs = 16
    s = U.create_scheduler(
        block_size=bs,
        num_blocks=10,
        max_num_seqs=4,
        max_num_batched_tokens=bs * 16,
        use_kv_connector=U.mock_kv(matched_tokens=bs * 4, is_async=True),
    )
    [a] = U.create_requests(num_requests=1, num_tokens=bs * 8, block_size=bs, req_ids=["a"])
    [b] = U.create_requests(num_requests=1, num_tokens=bs * 5, block_size=bs, req_ids=["b"])
    s.add_request(a)
    s.add_request(b)
    return s


def priority(prios, arrivals, max_num_seqs=16):
    s = T.create_scheduler_with_priority(max_num_seqs=max_num_seqs)
    for r in T.create_requests_with_priority(
        num_requests=len(prios), priorities=prios, arrival_times=arrivals
    ):
        s.add_request(r)
    return s


def remote_kv_at_arrival():
    """A request that arrives holding (remote) KV goes to vLLM's kv_holding_waiting."""
    s = U.create_scheduler(max_num_batched_tokens=64)
    reqs = U.create_requests(num_requests=3, req_ids=["r0", "remote", "r2"])
    reqs[1].status = RequestStatus.WAITING_FOR_REMOTE_KVS
    for r in reqs:
        s.add_request(r)
    s.finished_recving_kv_req_ids.add("remote")
    from unittest.mock import Mock

    s._update_waiting_for_remote_kv = Mock()
    return s


SCENARIOS = {
    "schedule_order[chunked]": lambda: schedule_order(True),
    "schedule_order[no-chunk]": lambda: schedule_order(False),
    "async_load_reservation_wedge": async_load_wedge,
    "priority_tiebreak(1,1,1 @3,1,2)": lambda: priority([1, 1, 1], [3.0, 1.0, 2.0]),
    "priority_mixed(2,1,1,0 @1,3,2,4)": lambda: priority([2, 1, 1, 0], [1.0, 3.0, 2.0, 4.0]),
    "priority_equal_seq1(2,2,2 @3,1,2)": lambda: priority([2, 2, 2], [3.0, 1.0, 2.0], 1),
    "remote_kv_at_arrival": remote_kv_at_arrival,
}


def main() -> None:
    cols = sys.argv[1:] or ["stock", "vllm", "lamps", "program"]
    print("| scenario | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, make in SCENARIOS.items():
        cells = []
        for col in cols:
            use(col)
            try:
                s = make()
                order = drive(s)
                bad = check_empty(s)
                cells.append(
                    ("ok " if not bad else "LEAK " + "; ".join(bad) + " ")
                    + "order="
                    + ",".join(order)
                )
            except Exception as exc:  # noqa: BLE001
                tb = traceback.extract_tb(exc.__traceback__)[-1]
                cells.append(
                    f"CRASH {type(exc).__name__}: {exc} "
                    f"({os.path.basename(tb.filename)}:{tb.lineno})"
                )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
