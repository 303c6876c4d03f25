"""Fixtures for the vLLM plug-in tests: a tiny local model and in-process engines.

Importing this module needs no vLLM (vLLM is imported inside the fixtures); each test module
starts with ``pytest.importorskip("vllm")``, so without the extra its tests are reported as
skipped with the reason (a skip raised here would instead break the collection)."""

from __future__ import annotations

import contextlib
import gc
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault(
    "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
)  # the scheduler is reachable in-process
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from adapters.vllm.tools.tiny_model import build_tiny_llama
from lamps_agent.hints import LampsHints
from lamps_agent.request import KVStrategy

BLOCK = 32
KV_BYTES = 2 * 2**20  # ~4,000 tokens: 127 blocks of 32


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def make_llm(
    model: Path,
    *,
    policy: str | None,
    swap: bool = False,
    async_scheduling: bool = False,
    **lamps: Any,
) -> Any:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    kwargs: dict[str, Any] = {}
    if policy is not None:
        variant = "LampsAsyncScheduler" if async_scheduling else "LampsScheduler"
        kwargs["scheduler_cls"] = f"adapters.vllm.scheduler.{variant}"
        kwargs["async_scheduling"] = async_scheduling
        kwargs["additional_config"] = {"lamps": {"policy": policy, **lamps}}
    if swap:
        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="HostSwapConnector",
            kv_connector_module_path="adapters.vllm.connector",
            kv_role="kv_both",
            kv_connector_extra_config={"host_swap_gb": 0.1},
        )
    return LLM(
        model=str(model),
        kv_cache_memory_bytes=KV_BYTES,
        enforce_eager=True,
        block_size=BLOCK,
        max_model_len=2048,
        max_num_seqs=8,
        enable_prefix_caching=True,
        seed=0,
        **kwargs,
    )


def scheduler_of(llm: Any) -> Any:
    return llm.llm_engine.engine_core.engine_core.scheduler


@pytest.fixture(scope="module")
def engine_factory(tiny_model: Path) -> Iterator[Any]:
    made: list[Any] = []

    def build(policy: str | None, **kw: Any) -> Any:
        llm = make_llm(tiny_model, policy=policy, **kw)
        made.append(llm)
        return llm

    yield build
    for llm in made:
        llm.llm_engine.engine_core.shutdown() if hasattr(
            llm.llm_engine.engine_core, "shutdown"
        ) else None
    made.clear()
    gc.collect()


class Tokens:
    """Seeded random token ids inside the tiny vocabulary."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> list[int]:
        return [self.rng.randrange(5, 300) for _ in range(n)]


def hints(session: str, step: int, *, tool: str | None, duration: float, strategy: KVStrategy,
          output: int = 20) -> dict[str, Any]:  # fmt: skip
    return LampsHints(
        session_id=session, priority=0, agent="test", step=step, output_tokens=output,
        tool=tool, tool_duration=duration, kv_strategy=strategy,
    ).to_xargs()  # fmt: skip


def generate(
    llm: Any, prompt: list[int], *, max_tokens: int, xargs: dict[str, Any] | None = None
) -> Any:
    from vllm import SamplingParams

    params = SamplingParams(
        max_tokens=max_tokens, ignore_eos=True, temperature=0.0, extra_args=xargs
    )
    return llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]


def press(llm: Any, tokens: Tokens, n: int = 6) -> None:
    """Fill the KV cache with other sessions' work so unpinned prefixes are evicted."""
    for _ in range(n):
        generate(llm, tokens(700), max_tokens=10)


def two_turns(
    llm: Any, tokens: Tokens, session: str, strategy: KVStrategy, *, duration: float = 5.0
) -> Any:
    """Turn 1 ending in a tool call, other sessions' load, then turn 2 with the returned tokens."""
    p1 = tokens(600)
    out1 = generate(
        llm,
        p1,
        max_tokens=20,
        xargs=hints(session, 0, tool="search", duration=duration, strategy=strategy),
    )
    press(llm, tokens)
    p2 = p1 + list(out1.outputs[0].token_ids) + tokens(10)
    out2 = generate(
        llm,
        p2,
        max_tokens=20,
        xargs=hints(session, 1, tool=None, duration=0.0, strategy=KVStrategy.DISCARD),
    )
    return p2, out2


def assert_no_leak(llm: Any) -> None:
    """After every session ended (pins released), all blocks but vLLM's null block are free."""
    sched = scheduler_of(llm)
    if hasattr(sched, "lamps"):
        sched.lamps.release_all("test-end")
    pool = sched.kv_cache_manager.block_pool
    assert pool.get_num_free_blocks() == pool.num_gpu_blocks - 1


@contextlib.contextmanager
def admissions(llm: Any) -> Iterator[list[str]]:
    """Record the ids of requests vLLM admits, in order, while the block runs."""
    sched = scheduler_of(llm)
    admitted: list[str] = []
    original = sched.schedule

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        admitted.extend(r.req_id for r in out.scheduled_new_reqs)
        return out

    sched.schedule = spy
    try:
        yield admitted
    finally:
        sched.schedule = original
