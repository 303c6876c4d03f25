"""The virtual-clock vLLM engine: vLLM's own V1 scheduler and KV-cache manager, stepped in-process
on the cost model's time, replaying the arrivals the simulator replays.

No model, no worker and no wall clock: each step's batch comes from vLLM's ``schedule()`` (stock,
or the lamps plug-in as served), its duration is ``preset.cost.iteration_time`` of the step's shape
(:func:`adapters.vllm.steplog.describe`, as the served step log measures it), and a fake model
output — one sampled token for each request that finished its prefill or decodes — goes back
through ``update_from_output()``.  vLLM's KV cache is sized exactly as the simulator's
(``preset.num_gpu_blocks`` usable blocks of ``preset.block_size``, plus vLLM's null block), with
its token budget and sequence limit, prefix caching and chunked prefill on.  The step records
therefore compare with the simulator's step by step (:class:`lamps_agent.steps.StepRecord`, keyed
``PROGRAM.TURN``): a difference is a difference in scheduling or KV modelling, not in timing.

Each program is an agent as :mod:`adapters.vllm.tools.replay` runs it: a turn's prompt is the
previous prompt, its generated tokens and the tool's returned tokens (ids drawn from the seed);
``max_tokens`` = ``min_tokens`` = the turn's output with ``ignore_eos``; the next turn is sent
``tool_duration`` virtual seconds after the turn ended, with the hints the replay sends.  Events
that fall inside a step are delivered after it, arrivals before tool returns (as the simulator
does); with nothing to schedule the clock jumps to the next event.

Virtual mode has no KV connector, so the plug-in has no host store: its core sees no host
blocks and chooses between preserve and discard, and any swap it still decides is a discard
(vLLM frees the blocks, which stay in its prefix cache until evicted), counted in
:attr:`VirtualRun.swaps_discarded`.  Compare with a simulator whose preset
has ``host_swap_gb=0``.  The plug-in's housekeeping thread does not run: its pins expire on the
virtual clock, at every step and whenever the clock jumps.

Where vLLM differs from the simulator by construction (the tests pin the first):

* vLLM never computes a turn's last sampled token (the next turn's prefill does), so a turn
  whose prompt + output ends on a block boundary leaves its last block unfilled and uncached;
  the simulator counts that token's KV, and a decoding request's resident KV one token ahead.
* vLLM admits a waiting request only when its whole prompt fits (``scheduler_reserve_full_isl``)
  and keeps no watermark; the simulator checks the first chunk and keeps a 1 % watermark.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.vllm.config import PluginConfig
from adapters.vllm.lamps_core import LampsCore
from adapters.vllm.steplog import describe
from adapters.vllm.tools.replay import minimal_prefill_tokens
from lamps_agent.hints import LampsHints
from lamps_agent.metrics import EngineCounters, RequestMetrics, RunLabels, RunSummary, summarize
from lamps_agent.policies import POLICIES
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.steps import StepRecord, request_key
from lamps_agent.strategy import choose_strategy
from lamps_agent.workloads.arrivals import Arrival

STOCK_POLICY = "vllm"
"""``VirtualOptions.policy`` for vLLM's own scheduler; any other name runs the lamps plug-in."""

_EOS = 2  # the tiny model's; never sampled (ignore_eos) and outside the drawn ids


class VirtualStuck(RuntimeError):
    """Work is left, nothing can be scheduled, and no event will come."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualOptions:
    model: str | Path  # a model folder (config and tokenizer only; no weights run)
    preset: Preset  # the cost model, the KV capacity and the batching limits
    policy: str = STOCK_POLICY
    max_model_len: int = 4096
    seed: int = 0  # token ids; a program's ids depend only on the seed and its index
    send_hints: bool = True
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    vocab_low: int = 5  # token ids are drawn from [vocab_low, vocab_high), as the replay's
    vocab_high: int = 300

    def __post_init__(self) -> None:
        if not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model must be a model folder with a config.json: {self.model}")
        if not isinstance(self.preset, Preset):
            raise ValueError("preset must be a lamps_agent Preset (load_preset)")
        if self.policy != STOCK_POLICY and self.policy not in POLICIES:
            valid = ", ".join(sorted({STOCK_POLICY, *POLICIES.names()}))
            raise ValueError(f"policy must be one of {valid}, got {self.policy!r}")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if not 0 <= self.vocab_low < self.vocab_high:
            raise ValueError("token ids need 0 <= vocab_low < vocab_high")
        if not isinstance(self.policy_options, Mapping):
            raise ValueError("policy_options must be a mapping")


@dataclass(frozen=True, slots=True)
class ProgramRun:
    """One program's run, in virtual seconds."""

    index: int  # in the arrivals
    program: Program
    arrival: float
    finish: float
    ttft: float  # from its arrival to the end of the step that gave its first token
    preemptions: int


@dataclass(slots=True)
class VirtualRun:
    policy: str
    preset: str
    steps: list[StepRecord]
    programs: list[ProgramRun]
    preemptions: int
    prefill_computed_tokens: int  # Σ the steps' prefill tokens
    # Computed prefill beyond the minimum (every first prompt and every tool return), as
    # adapters.vllm.tools.replay.summarize counts a served engine's.
    recomputed_tokens: int
    prefix_hit_tokens: int  # tokens found cached when a request was first (or again) scheduled
    peak_used_blocks: int
    usable_blocks: int  # vLLM's blocks less its null block: the preset's num_gpu_blocks
    swaps_discarded: int  # the plug-in chose swap; without a connector vLLM discarded
    plugin_stats: dict[str, Any] | None  # the plug-in's counters; None for stock vLLM

    def summary(self, labels: RunLabels) -> RunSummary:
        """The run in the simulator's report format (virtual seconds)."""
        metrics = [
            RequestMetrics(
                request_id=p.index,
                program_id=p.program.program_id,
                agent=p.program.agent,
                arrival=p.arrival,
                finish=p.finish,
                e2e=p.finish - p.arrival,
                tool_time=p.program.total_tool_time,
                ttft=p.ttft,
                normalized_latency=(p.finish - p.arrival) / p.program.total_output_tokens,
                max_queue_wait=float("nan"),  # vLLM's queue is not observed per turn
                output_tokens=p.program.total_output_tokens,
                tool_calls=p.program.num_tool_calls,
                recomputed_tokens=0,
                preemptions=p.preemptions,
            )
            for p in self.programs
        ]
        counters = EngineCounters(
            recomputed_tokens=self.recomputed_tokens,
            peak_kv_blocks=self.peak_used_blocks,
            peak_kv_fraction=self.peak_used_blocks / self.usable_blocks,
            iterations=len(self.steps),
            preemptions=self.preemptions,
            swap_fallbacks=self.swaps_discarded,
            prefix_hit_tokens=self.prefix_hit_tokens,
        )
        return summarize(metrics, labels=labels, preset=self.preset, counters=counters)


def run_virtual(options: VirtualOptions, arrivals: Sequence[Arrival]) -> VirtualRun:
    """Replay ``arrivals`` (sorted by time) on vLLM's scheduler to the last program's end."""
    return VirtualEngine(options, arrivals).run()


@dataclass(slots=True)
class _Agent:
    index: int
    arrival: Arrival
    ids: list[int]  # the next turn's prompt
    prompt_rng: random.Random
    sample_rng: random.Random
    turn: int = 0
    generated: list[int] = field(default_factory=list)
    ttft: float | None = None
    finish: float | None = None
    preemptions: int = 0


def _virtual_scheduler_cls() -> type:
    from adapters.vllm.scheduler import LampsScheduler

    class VirtualLampsScheduler(LampsScheduler):
        """The plug-in on the virtual clock, with the preset object (not a name) and no
        housekeeping thread."""

        housekeeping = False

        def __init__(
            self, *args: Any, clock: Callable[[], float], preset: Preset, **kwargs: Any
        ) -> None:
            self._virtual_clock = clock
            self._virtual_preset = preset
            super().__init__(*args, **kwargs)

        def _lamps_core(self, config: PluginConfig) -> LampsCore:
            return LampsCore(self, config, clock=self._virtual_clock, preset=self._virtual_preset)

    return VirtualLampsScheduler


class VirtualEngine:
    """One replay on vLLM's scheduler; :meth:`run` it once.  ``sched`` (vLLM's scheduler, with
    the plug-in's state as ``sched.lamps``) and ``now`` stay readable after the run."""

    def __init__(self, options: VirtualOptions, arrivals: Sequence[Arrival]) -> None:
        if any(b.time < a.time for a, b in itertools.pairwise(arrivals)):
            raise ValueError("arrivals must be sorted by time")
        self.options = options
        self.preset = options.preset
        self.arrivals = arrivals
        self.now = 0.0
        self.sched = self._build_scheduler()
        self.agents = [self._agent(i, a) for i, a in enumerate(arrivals)]
        self._next_arrival = 0
        self._returns: list[tuple[float, int, int]] = []  # (time, seq, agent index)
        self._seq = itertools.count()
        self._done = 0
        self.steps: list[StepRecord] = []
        self.prefill_computed = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.peak_used = 0

    # -- set-up ----------------------------------------------------------------------------
    def _build_scheduler(self) -> Any:
        import torch
        from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
        from vllm.utils.hashing import sha256
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.structured_output import StructuredOutputManager

        opts, preset = self.options, self.preset
        bs = preset.block_size
        model = ModelConfig(
            model=str(opts.model), dtype="float16", seed=opts.seed, max_model_len=opts.max_model_len
        )
        scheduler_config = SchedulerConfig(
            max_num_seqs=preset.max_num_seqs,
            max_num_batched_tokens=preset.token_budget,
            max_model_len=opts.max_model_len,
            enable_chunked_prefill=True,
            is_encoder_decoder=False,
        )
        cache = CacheConfig(block_size=bs, enable_prefix_caching=True)
        additional: dict[str, Any] = {}
        if opts.policy != STOCK_POLICY:
            lamps = {"policy": opts.policy, "policy_options": dict(opts.policy_options)}
            additional["lamps"] = lamps
        config = VllmConfig(
            scheduler_config=scheduler_config,
            model_config=model,
            cache_config=cache,
            additional_config=additional,
        )
        num_blocks = preset.num_gpu_blocks + 1  # vLLM's block 0 is its null block
        spec = FullAttentionSpec(block_size=bs, num_kv_heads=1, head_size=1, dtype=torch.float32)
        kv = KVCacheConfig(
            num_blocks=num_blocks,
            kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)],
        )
        cache.num_gpu_blocks = num_blocks
        register_all_kvcache_specs(config)  # type: ignore[no-untyped-call]
        init_none_hash(sha256)  # the engine core's default prefix_caching_hash_algo
        self.hasher = get_request_block_hasher(bs, sha256)
        kwargs: dict[str, Any] = {
            "vllm_config": config,
            "kv_cache_config": kv,
            "block_size": bs,
            "log_stats": False,
            "structured_output_manager": StructuredOutputManager(config),
        }
        if opts.policy == STOCK_POLICY:
            return Scheduler(**kwargs)
        return _virtual_scheduler_cls()(**kwargs, clock=self.clock, preset=preset)

    def clock(self) -> float:
        return self.now

    def _agent(self, index: int, arrival: Arrival) -> _Agent:
        opts = self.options
        rng = random.Random(f"{opts.seed}-{index}")  # the replay's prompt ids for this seed
        first = arrival.program.segments[0].prompt_tokens
        ids = [rng.randrange(opts.vocab_low, opts.vocab_high) for _ in range(first)]
        sample_rng = random.Random(f"{opts.seed}-{index}-sampled")
        return _Agent(index, arrival, ids, rng, sample_rng)

    @property
    def plugin(self) -> LampsCore | None:
        return getattr(self.sched, "lamps", None)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> VirtualRun:
        try:
            while self._done < len(self.agents):
                self._absorb_events()
                if self.sched.get_num_unfinished_requests() == 0 or not self._step():
                    self._jump_to_next_event()
            return self._result()
        finally:
            self.sched.shutdown()

    def _step(self) -> bool:
        """One engine step at ``now``; False when vLLM scheduled nothing."""
        sched = self.sched
        out = sched.schedule()
        tokens = dict(out.num_scheduled_tokens)
        if not tokens:
            return False
        shape = describe(tokens, sched.requests)
        cost = self.preset.cost.iteration_time(
            shape.prefill_tokens,
            shape.decode_seqs,
            shape.resident_kv_tokens,
            shape.attn_products,
            shape.prefill_seqs,
        )
        preempted = sorted(out.preempted_req_ids or ())
        used = self._used_blocks()
        self.steps.append(
            StepRecord(
                step=len(self.steps) + 1,
                t=self.now,
                ms=cost * 1000.0,
                shape=shape,
                scheduled=tokens,
                preempted=preempted,
                used_blocks=used,
            )
        )
        self.peak_used = max(self.peak_used, used)
        self.prefill_computed += shape.prefill_tokens
        self._count_hits(out, tokens)
        for rid in preempted:
            self.preemptions += 1
            self.agents[_program_of(rid)].preemptions += 1
        model_output = self._model_output(tokens)
        self.now += cost
        self._deliver(sched.update_from_output(out, model_output))
        return True

    def _count_hits(self, out: Any, tokens: Mapping[str, int]) -> None:
        """Tokens already computed when a request starts (new) or starts again (resumed after
        a preemption): its prefix-cache hit (pinned blocks included)."""
        starts = {new.req_id for new in out.scheduled_new_reqs}
        starts.update(getattr(out.scheduled_cached_reqs, "resumed_req_ids", None) or ())
        for rid in starts:
            request = self.sched.requests.get(rid)
            if request is not None:
                self.prefix_hits += request.num_computed_tokens - tokens[rid]

    def _model_output(self, tokens: Mapping[str, int]) -> Any:
        """What the model runner returns: one sampled token for each request whose computed
        tokens reached its length (its prefill ended, or it decodes); none for a chunk."""
        from vllm.v1.outputs import ModelRunnerOutput

        req_ids = list(tokens)
        sampled: list[list[int]] = []
        for rid in req_ids:
            request = self.sched.requests[rid]
            if request.num_computed_tokens >= request.num_tokens:
                agent = self.agents[_program_of(rid)]
                opts = self.options
                sampled.append([agent.sample_rng.randrange(opts.vocab_low, opts.vocab_high)])
            else:
                sampled.append([])
        return ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
            sampled_token_ids=sampled,
            logprobs=None,
            prompt_logprobs_dict={},
            prompt_token_id_logprobs_dict={},
            pooler_output=[],
        )

    def _deliver(self, outputs: Mapping[int, Any]) -> None:
        """The step's tokens reach their agents; a turn that ended sends its tool call."""
        for engine_outputs in outputs.values():
            for output in engine_outputs.outputs:
                agent = self.agents[_program_of(output.request_id)]
                if output.new_token_ids:
                    agent.generated.extend(output.new_token_ids)
                    if agent.ttft is None:
                        agent.ttft = self.now - agent.arrival.time
                if output.finish_reason is not None:
                    self._turn_ended(agent)

    def _turn_ended(self, agent: _Agent) -> None:
        seg = agent.arrival.program.segments[agent.turn]
        if seg.tool is None:
            agent.finish = self.now
            self._done += 1
            return
        opts = self.options
        returned = [
            agent.prompt_rng.randrange(opts.vocab_low, opts.vocab_high)
            for _ in range(seg.returned_tokens)
        ]
        agent.ids = agent.ids + agent.generated + returned
        agent.generated = []
        agent.turn += 1
        heapq.heappush(self._returns, (self.now + seg.tool_duration, next(self._seq), agent.index))

    # -- events ----------------------------------------------------------------------------
    def _absorb_events(self) -> None:
        arrivals = self.arrivals
        while self._next_arrival < len(arrivals) and arrivals[self._next_arrival].time <= self.now:
            agent = self.agents[self._next_arrival]
            self._submit(agent, agent.arrival.time)
            self._next_arrival += 1
        while self._returns and self._returns[0][0] <= self.now:
            sent, _, index = heapq.heappop(self._returns)
            self._submit(self.agents[index], sent)

    def _jump_to_next_event(self) -> None:
        times = [t for t, _, _ in self._returns[:1]]
        if self._next_arrival < len(self.arrivals):
            times.append(self.arrivals[self._next_arrival].time)
        if not times:
            raise VirtualStuck(
                f"stuck at t={self.now:.3f}s: {self.sched.get_num_unfinished_requests()} "
                "requests left, nothing can be scheduled and no event is due"
            )
        self.now = max(self.now, min(times))
        plugin = self.plugin
        if plugin is not None:  # the housekeeping an idle served engine does on its thread
            with plugin.lock:
                plugin.expire_idle()

    def _submit(self, agent: _Agent, sent: float) -> None:
        """The agent's current turn reaches the engine (sent at ``sent``, added now)."""
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        opts = self.options
        seg = agent.arrival.program.segments[agent.turn]
        body = self._hints(agent) if opts.send_hints else {}
        params = SamplingParams(
            max_tokens=seg.output_tokens,
            min_tokens=seg.output_tokens,
            ignore_eos=True,
            temperature=0.0,
            extra_args=body.get("vllm_xargs"),
        )
        params.update_from_generation_config({}, _EOS)  # as vLLM's input processor does
        request = Request(
            request_id=request_key(agent.index, agent.turn),
            prompt_token_ids=list(agent.ids),
            sampling_params=params,
            pooling_params=None,
            arrival_time=sent,
            priority=int(body.get("priority", 0)),
            block_hasher=self.hasher,
            session_id=body.get("session_id"),
        )
        self.sched.add_request(request)

    def _hints(self, agent: _Agent) -> dict[str, Any]:
        """The request-body fields the replay (and the LangChain middleware) send."""
        program = agent.arrival.program
        seg = program.segments[agent.turn]
        hints = LampsHints(
            session_id=f"agent-{agent.index}",
            priority=0,
            agent=program.agent,
            step=agent.turn,
            output_tokens=seg.output_tokens,
            tool=seg.tool,
            tool_duration=seg.tool_duration,
            kv_strategy=choose_strategy(
                context_tokens=seg.prompt_tokens + seg.output_tokens,
                tool_duration=seg.tool_duration,
                preset=self.preset,
            ),
        )
        return hints.to_body()

    # -- results ---------------------------------------------------------------------------
    def _used_blocks(self) -> int:
        pool = self.sched.kv_cache_manager.block_pool
        return int(pool.num_gpu_blocks - 1 - pool.get_num_free_blocks())  # less the null block

    def _result(self) -> VirtualRun:
        programs = []
        for agent in self.agents:
            assert agent.finish is not None and agent.ttft is not None
            programs.append(
                ProgramRun(
                    agent.index,
                    agent.arrival.program,
                    agent.arrival.time,
                    agent.finish,
                    agent.ttft,
                    agent.preemptions,
                )
            )
        minimum = minimal_prefill_tokens([a.program for a in self.arrivals])
        plugin = self.plugin
        stats = plugin.stats() if plugin is not None else None
        return VirtualRun(
            policy=self.options.policy,
            preset=self.preset.name,
            steps=self.steps,
            programs=programs,
            preemptions=self.preemptions,
            prefill_computed_tokens=self.prefill_computed,
            recomputed_tokens=max(self.prefill_computed - minimum, 0),
            prefix_hit_tokens=self.prefix_hits,
            peak_used_blocks=self.peak_used,
            usable_blocks=self.preset.num_gpu_blocks,
            swaps_discarded=stats["swap_fallbacks"] if stats is not None else 0,
            plugin_stats=stats,
        )


def _program_of(request_id: str) -> int:
    return int(request_id.split(".", 1)[0])
