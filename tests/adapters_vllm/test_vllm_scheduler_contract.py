"""The plug-in's scheduler against vLLM's scheduler contract, built as vLLM's own unit tests build
a scheduler (no engine, no model weights: the tiny model's config only).  Each test is a contract
point that vLLM's tests/v1/core/test_scheduler.py found broken (docs/vllm.md, "Conformance")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")

pytestmark = pytest.mark.vllm

BLOCK = 16


def build(model: Path, *, policy: str, scheduling: str = "fcfs", max_num_seqs: int = 16) -> Any:
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from adapters.vllm.scheduler import LampsScheduler

    model_config = ModelConfig(model=str(model), dtype="float16", seed=0, max_model_len=2048)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=2048,
        max_model_len=2048,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
        watermark=0.0,
        policy=scheduling,
    )
    cache_config = CacheConfig(block_size=BLOCK, enable_prefix_caching=True)
    config = VllmConfig(
        scheduler_config=scheduler_config,
        model_config=model_config,
        cache_config=cache_config,
        additional_config={"lamps": {"policy": policy}},
    )
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(
        num_blocks=1000, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l"], spec)]
    )
    cache_config.num_gpu_blocks = 1000
    register_all_kvcache_specs(config)
    return LampsScheduler(
        vllm_config=config,
        kv_cache_config=kv,
        block_size=BLOCK,
        log_stats=False,
        structured_output_manager=StructuredOutputManager(config),
    )


def request(rid: str, *, priority: int = 0, arrival: float = 0.0, tokens: int = 20) -> Any:
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    params = SamplingParams(max_tokens=8)
    params.update_from_generation_config({}, 2)
    return Request(
        request_id=rid,
        prompt_token_ids=[int(rid) % 50 + 3] * tokens,
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival,
        priority=priority,
        block_hasher=get_request_block_hasher(BLOCK, sha256),
    )


@pytest.mark.parametrize("policy", ["vllm", "lamps", "program"])
def test_the_waiting_queue_is_indexable_as_vllms(tiny_model: Path, policy: str) -> None:
    sched = build(tiny_model, policy=policy)
    for i in range(3):
        sched.add_request(request(str(i), arrival=float(i)))
    assert len(sched.waiting) == 3
    assert {sched.waiting[i].request_id for i in range(3)} == {"0", "1", "2"}
    assert sched.waiting[0] is next(iter(sched.waiting))


@pytest.mark.parametrize("policy", ["vllm", "lamps", "program"])
def test_priority_scheduling_is_honoured_not_ignored(tiny_model: Path, policy: str) -> None:
    """``--scheduling-policy priority``: lower priority value first, whatever the policy."""
    sched = build(tiny_model, policy=policy, scheduling="priority", max_num_seqs=2)
    for rid, prio, arrival in (("0", 5, 0.0), ("1", 0, 1.0), ("2", 1, 2.0), ("3", 9, 3.0)):
        sched.add_request(request(rid, priority=prio, arrival=arrival))
    out = sched.schedule()
    assert [r.req_id for r in out.scheduled_new_reqs] == ["1", "2"]
    assert sched.lamps.core.priority_scheduling


def test_fcfs_scheduling_does_not_read_priorities(tiny_model: Path) -> None:
    sched = build(tiny_model, policy="vllm", max_num_seqs=2)
    for rid, prio, arrival in (("0", 5, 0.0), ("1", 0, 1.0), ("2", 1, 2.0)):
        sched.add_request(request(rid, priority=prio, arrival=arrival))
    out = sched.schedule()
    assert [r.req_id for r in out.scheduled_new_reqs] == ["0", "1"]
    assert not sched.lamps.core.priority_scheduling
