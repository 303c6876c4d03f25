from lamps_agent.request import Request
from lamps_agent.scheduler import WaitingQueue
from tests.core.conftest import make_program

PROGRAM = make_program("p", [(5, 0, 0)])


def _req(i: int) -> Request:
    return Request(request_id=i, program=PROGRAM, arrival_time=float(i))


def test_orders_by_key_and_supports_removal_while_iterating() -> None:
    q = WaitingQueue()
    reqs = [_req(i) for i in range(6)]
    for r, key in zip(reqs, [5.0, 1.0, 4.0, 2.0, 3.0, 0.5], strict=True):
        q.push(r, (key,), iteration=0)
    order = []
    for r in q.ordered(0):
        order.append(r.request_id)
        if r.request_id in (5, 3):
            q.remove(r)
    assert order == [5, 1, 3, 4, 2, 0]
    assert [r.request_id for r in q.ordered(0)] == [1, 4, 2, 0]
    assert len(q) == 4


def test_starved_requests_go_first_oldest_first() -> None:
    q = WaitingQueue(starvation_threshold=10)
    big, small1, small2 = _req(0), _req(1), _req(2)
    q.push(big, (1e9,), iteration=0)
    q.push(small1, (1.0,), iteration=5)
    q.push(small2, (2.0,), iteration=9)
    assert [r.request_id for r in q.ordered(9)] == [1, 2, 0]
    assert [r.request_id for r in q.ordered(10)] == [0, 1, 2]  # big starved: head of the queue
    assert [r.request_id for r in q.ordered(19)] == [0, 1, 2]  # both starved now, oldest first
    assert q.is_starved(big, 10) and not q.is_starved(small2, 18)


def test_compaction_keeps_order() -> None:
    q = WaitingQueue(starvation_threshold=3)
    reqs = [_req(i) for i in range(200)]
    for r in reqs:
        q.push(r, (float(-r.request_id),), iteration=0)
    for r in reqs[:150]:
        q.remove(r)
    q.compact()
    assert [r.request_id for r in q.ordered(1)] == list(range(199, 149, -1))
