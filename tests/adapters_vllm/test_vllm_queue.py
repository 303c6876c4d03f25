"""The waiting queue the plug-in installs in vLLM: policy keys, starvation, vLLM's queue contract."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")
pytestmark = pytest.mark.vllm

from adapters.vllm.queue import LampsRequestQueue  # noqa: E402


@dataclass(eq=False)  # hashable by identity, like vLLM's Request
class FakeRequest:
    request_id: str
    key: float
    arrival_time: float = 0.0


def _req(rid: str, key: float) -> FakeRequest:
    return FakeRequest(rid, key)


def test_orders_by_key_and_serves_preempted_first() -> None:
    step = [0]
    q = LampsRequestQueue(key=lambda r: (r.key,), step=lambda: step[0], starvation_threshold=None)
    a, b, c = _req("a", 3.0), _req("b", 1.0), _req("c", 2.0)
    for r in (a, b, c):
        q.add_request(r)  # type: ignore[arg-type]
    assert [r.request_id for r in q] == ["b", "c", "a"]
    assert q.pop_request().request_id == "b"
    q.prepend_request(_req("p", 99.0))  # type: ignore[arg-type]
    assert q.peek_request().request_id == "p" and len(q) == 3
    q.remove_requests([a])  # type: ignore[list-item]
    assert [r.request_id for r in q] == ["p", "c"]
    with pytest.raises(IndexError):
        LampsRequestQueue(
            key=lambda r: (0.0,), step=lambda: 0, starvation_threshold=None
        ).pop_request()


def test_starved_requests_lead_oldest_first() -> None:
    step = [0]
    q = LampsRequestQueue(key=lambda r: (r.key,), step=lambda: step[0], starvation_threshold=5)
    big = _req("big", 1e9)
    q.add_request(big)  # type: ignore[arg-type]
    step[0] = 3
    q.add_request(_req("small", 1.0))  # type: ignore[arg-type]
    assert q.peek_request().request_id == "small"
    step[0] = 5
    assert q.peek_request().request_id == "big" and q.is_starved(big)  # type: ignore[arg-type]
