"""The swap strategy on a real engine.  Kept in its own module, collected last: an engine with a KV
connector installs vLLM's process-global transfer group, which engines without one then trip on."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

from lamps_agent.request import KVStrategy
from tests.adapters_vllm.conftest import Tokens, assert_no_leak, generate, scheduler_of, two_turns

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def swapping(engine_factory: Any) -> Any:
    return engine_factory("lamps", swap=True)


def test_swap_matches_recompute_and_recomputes_only_new_tokens(swapping: Any) -> None:
    sched = scheduler_of(swapping)
    p2, swapped = two_turns(swapping, Tokens(3), "s-swap", KVStrategy.SWAP)
    assert sched.connector.saved_blocks >= 18 and sched.connector.loaded_blocks >= 18
    assert swapped.num_cached_tokens == (len(p2) - 10) // 32 * 32  # all but the new tail came back
    swapping.reset_prefix_cache()
    recomputed = generate(swapping, p2, max_tokens=20)
    assert list(swapped.outputs[0].token_ids) == list(recomputed.outputs[0].token_ids)


def test_no_block_leak_with_swap(swapping: Any) -> None:
    assert_no_leak(swapping)
