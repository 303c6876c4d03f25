"""Replaying an agent trace against a running OpenAI-compatible vLLM server.

Each program is an agent: turn by turn it sends its whole context as token ids to
``/v1/completions`` (streaming, ``max_tokens`` = the turn's output with ``ignore_eos``, greedy),
waits for the tool for real (``tool_duration × time_scale``), appends the generated tokens and the
tool's returned tokens, and goes on.  Hints travel as the LangChain middleware sends them
(``priority``, ``session_id``, ``vllm_xargs``).  E2E and TTFT are measured by the client; the
server's prefill work comes from its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from lamps_agent.hints import LampsHints
from lamps_agent.metrics import EngineCounters, RequestMetrics, RunLabels, RunSummary
from lamps_agent.metrics import summarize as summarize_run
from lamps_agent.program import Program
from lamps_agent.strategy import choose_strategy
from lamps_agent.workloads.arrivals import Arrival


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    url: str
    model: str
    time_scale: float = 1.0  # tool durations are multiplied by this
    send_hints: bool = True
    vocab_low: int = 5  # random token ids are drawn from [vocab_low, vocab_high)
    vocab_high: int = 300
    preset: str = "h100-llama3-8b"
    seed: int = 0  # token ids (not arrivals): a repeat with another seed shares no prefix
    session_prefix: str = (
        ""  # session ids are PREFIXagent-N (a repeat on the same server: new ones)
    )
    request_timeout: float = 600.0


@dataclass(slots=True)
class ProgramResult:
    program: Program
    arrival: float  # seconds after the replay started
    finish: float
    ttft: float
    prompt_tokens_sent: int


async def _turn(
    session: aiohttp.ClientSession, opts: ReplayOptions, body: dict[str, object]
) -> tuple[list[int], float]:
    """One streamed completion; returns (generated token ids, seconds to the first token)."""
    started = time.perf_counter()
    first: float | None = None
    ids: list[int] = []
    async with session.post(f"{opts.url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"server answered {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices", ()):
                new = choice.get("token_ids") or []
                if new and first is None:
                    first = time.perf_counter() - started
                ids.extend(new)
    return ids, first if first is not None else time.perf_counter() - started


async def _agent(
    index: int, arrival: Arrival, opts: ReplayOptions, session: aiohttp.ClientSession, t0: float
) -> ProgramResult:
    rng = random.Random(f"{opts.seed}-{index}")
    program = arrival.program
    await asyncio.sleep(max(arrival.time - (time.perf_counter() - t0), 0.0))
    start = time.perf_counter() - t0
    ids = [
        rng.randrange(opts.vocab_low, opts.vocab_high)
        for _ in range(program.segments[0].prompt_tokens)
    ]
    ttft = 0.0
    sent = 0
    for step, seg in enumerate(program.segments):
        duration = seg.tool_duration * opts.time_scale
        body: dict[str, object] = {
            "model": opts.model,
            "prompt": ids,
            "max_tokens": seg.output_tokens,
            "min_tokens": seg.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "return_token_ids": True,
        }
        if opts.send_hints:
            hints = LampsHints(
                session_id=f"{opts.session_prefix}agent-{index}",
                priority=0,
                agent=program.agent,
                step=step,
                output_tokens=seg.output_tokens,
                tool=seg.tool,
                tool_duration=duration,
                kv_strategy=choose_strategy(
                    context_tokens=seg.prompt_tokens + seg.output_tokens,
                    tool_duration=duration,
                    preset=opts.preset,
                ),
            )
            body.update(hints.to_body())
        out, first = await _turn(session, opts, body)
        sent += len(ids)
        if step == 0:
            ttft = first
        if seg.tool is None:
            break
        await asyncio.sleep(duration)
        ids = (
            ids
            + out
            + [rng.randrange(opts.vocab_low, opts.vocab_high) for _ in range(seg.returned_tokens)]
        )
    return ProgramResult(program, start, time.perf_counter() - t0, ttft, sent)


async def replay(arrivals: Sequence[Arrival], opts: ReplayOptions) -> list[ProgramResult]:
    timeout = aiohttp.ClientTimeout(total=opts.request_timeout)
    # No keep-alive: an agent idles in its tool longer than the server's keep-alive, and a stale
    # pooled connection fails on write.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t0 = time.perf_counter()
        return await asyncio.gather(
            *(_agent(i, a, opts, session, t0) for i, a in enumerate(arrivals))
        )


def minimal_prefill_tokens(programs: Sequence[Program]) -> int:
    """Prompt tokens that must be computed even with perfect KV reuse: each program's first prompt
    and every tool return (generated tokens already have their KV)."""
    return sum(
        p.segments[0].prompt_tokens + sum(s.returned_tokens for s in p.segments) for p in programs
    )


def summarize(
    results: Sequence[ProgramResult],
    *,
    policy: str,
    trace: str,
    qps: float,
    seed: int,
    prefill_computed: int,
    time_scale: float,
) -> RunSummary:
    """The replay in the simulator's report format.  ``recomputed_tokens`` is the server's computed
    prefill beyond :func:`minimal_prefill_tokens`."""
    metrics = [
        RequestMetrics(
            request_id=i,
            program_id=r.program.program_id,
            agent=r.program.agent,
            arrival=r.arrival,
            finish=r.finish,
            e2e=r.finish - r.arrival,
            tool_time=r.program.total_tool_time * time_scale,
            ttft=r.ttft,
            normalized_latency=(r.finish - r.arrival) / r.program.total_output_tokens,
            max_queue_wait=math.nan,  # not observable from the client
            output_tokens=r.program.total_output_tokens,
            tool_calls=r.program.num_tool_calls,
            recomputed_tokens=0,
            preemptions=0,
        )
        for i, r in enumerate(results)
    ]
    recomputed = max(prefill_computed - minimal_prefill_tokens([r.program for r in results]), 0)
    return summarize_run(
        metrics,
        labels=RunLabels(policy=policy, predictor="hints", trace=trace, qps=qps, seed=seed),
        preset="engine",
        counters=EngineCounters(recomputed_tokens=recomputed),
    )
