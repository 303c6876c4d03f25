"""``LampsScheduler``: vLLM's V1 scheduler, ordered and told what to do with each turn's KV by the
same lamps-agent policy code that drives the simulator.

Load with ``--scheduler-cls adapters.vllm.scheduler.LampsScheduler`` (``LampsAsyncScheduler``
where vLLM uses its async scheduler, as on GPUs), and ``--additional-config
'{"lamps": {"policy": "lamps"}}'`` (or ``LAMPS_POLICY=lamps``).  Policies: ``lamps`` (memory-over-
time ranking + starvation bound + per-turn KV strategy), ``infercept`` (original-arrival order,
least-waste strategy revisited every step), ``vllm`` (stock order and discard; counters only).

What happens where:

* ``add_request`` — read the request's hints (or estimate them), let the core policy predict the
  turn and compute its queue key; never raises on bad hints.
* ``schedule`` — expire pins, release pins under memory pressure (worst waste first), then vLLM's
  own schedule over the re-ordered waiting queue; afterwards release the pins of sessions whose
  next turn was just admitted (it now holds its own references).
* ``_free_request`` — a turn ended: if a tool call follows, preserve (pin its blocks), swap (hand
  them to the host-memory KV connector) or discard (free as vLLM does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from adapters.vllm.config import PluginConfig
from adapters.vllm.pins import PinTable
from adapters.vllm.queue import LampsRequestQueue
from adapters.vllm.turns import TurnInfo, TurnTracker
from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies import EngineView, Policy, make_policy
from lamps_agent.predictors import OraclePredictor
from lamps_agent.presets import load_preset
from lamps_agent.program import Program, Segment
from lamps_agent.request import KVStrategy
from lamps_agent.request import Request as CoreRequest
from lamps_agent.strategy import choose_strategy
from lamps_agent.waste import paused_wastes

log = logging.getLogger("lamps.vllm")
SWAP_MARK = "_lamps_swap"  # read by adapters.vllm.connector.HostSwapConnector
_NORMAL_END = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED)


class LampsCore:
    """The plug-in's state, kept apart from vLLM's class so both scheduler variants share it."""

    def __init__(self, sched: Scheduler, config: PluginConfig) -> None:
        self.sched = sched
        self.config = config
        self.preset = load_preset(config.preset)
        pool = sched.kv_cache_manager.block_pool
        self.pool = pool
        self.block_size = sched.cache_config.block_size
        self.memory = KVMemory(
            num_gpu_blocks=max(pool.num_gpu_blocks, 1),
            num_host_blocks=0,
            block_size=self.block_size,
        )
        self.view = EngineView(preset=self.preset, memory=self.memory)
        # The hints are the predictions: an oracle over segments built from them.
        options = {"starvation_threshold": None} if config.policy == "lamps" else {}
        self.policy: Policy = make_policy(
            config.policy, predictor=OraclePredictor(), preset=self.preset, **options
        )
        self.policy.bind(self.view)
        self.turns = TurnTracker(default_output_tokens=config.default_output_tokens)
        self.pins = PinTable(touch=pool.touch, free=pool.free_blocks)
        self.step = 0
        self.info: dict[str, TurnInfo] = {}
        self.keys: dict[str, tuple[float, ...]] = {}
        self.prefill_computed = 0
        self.prefill_cached = 0
        self.swap_fallbacks = 0
        self.errors = 0
        self._ids = 0
        self._stats_file = os.environ.get("LAMPS_STATS_FILE")
        self.swaps = 0
        self.swap_available = (
            type(getattr(sched, "connector", None)).__name__ == "HostSwapConnector"
        )

    # -- requests in -------------------------------------------------------------------------
    def on_add(self, request: Request) -> None:
        try:
            params = request.sampling_params
            info = self.turns.read(
                getattr(params, "extra_args", None) if params is not None else None,
                request.session_id,
                request.priority,
                getattr(params, "max_tokens", None) if params is not None else None,
            )
            self.info[request.request_id] = info
            self.keys[request.request_id] = self._key(request, info)
        except Exception:
            self.errors += 1
            log.exception("lamps: could not read request %s; FCFS for it", request.request_id)
            self.keys[request.request_id] = (math.inf, request.arrival_time)

    def _key(self, request: Request, info: TurnInfo) -> tuple[float, ...]:
        prompt = max(request.num_prompt_tokens, 1)
        output = max(round(info.output_tokens), 1)
        first = Segment(
            prompt_tokens=prompt,
            output_tokens=output,
            tool=info.tool,
            tool_duration=info.tool_duration,
        )
        segments = (
            (first,)
            if info.tool is None
            else (first, Segment(prompt_tokens=prompt + output, output_tokens=1))
        )
        hist = self.turns.sessions.get(info.session_id) if info.session_id else None
        self._ids += 1
        core = CoreRequest(
            request_id=self._ids,
            program=Program(program_id=request.request_id, agent="vllm", segments=segments),
            arrival_time=hist.first_arrival if hist is not None else request.arrival_time,
        )
        self.sync_view()
        self.policy.on_turn_start(core)
        if info.strategy is None and core.strategy is not None:
            self.info[request.request_id] = TurnInfo(
                info.session_id,
                info.output_tokens,
                info.tool,
                info.tool_duration,
                core.strategy,
                info.hinted,
            )
        return self.policy.queue_key(core, resumed=False)

    def key_of(self, request: Request) -> tuple[float, ...]:
        return self.keys.get(request.request_id, (math.inf, request.arrival_time))

    # -- every step ----------------------------------------------------------------------------
    def sync_view(self) -> None:
        running = self.sched.running
        view = self.view
        view.now = time.time()
        view.iteration = self.step
        view.num_running = len(running)
        view.running_tokens = sum(r.num_computed_tokens for r in running)
        self.memory.free_gpu_blocks = min(
            self.pool.get_num_free_blocks(), self.memory.num_gpu_blocks
        )

    def before_schedule(self) -> None:
        self.step += 1
        now = time.time()
        self.pins.expire(now)
        if not self.pins.pins:
            return
        if self.config.policy == "infercept":
            self._revisit_pins(now)
        head = self._head()
        need = len(self.sched.running)
        keep = None
        if head is not None:
            cached = self.sched.kv_cache_manager.estimate_cached_tokens(head)
            need += math.ceil(max(head.num_tokens - cached, 0) / self.block_size) + 1
            keep = self.info.get(head.request_id)
        if self.pool.get_num_free_blocks() < need:
            own = keep.session_id if keep is not None else None
            saved = (
                self.pins.pins.pop(own, None) if own else None
            )  # never drop the head's own prefix
            self.pins.relieve(need, self.pool.get_num_free_blocks, now)
            if saved is not None and own is not None:
                self.pins.pins[own] = saved

    def _head(self) -> Request | None:
        try:
            return self.sched.waiting.peek_request() if self.sched.waiting else None
        except IndexError:
            return None

    def _revisit_pins(self, now: float) -> None:
        """INFERCEPT: every step, a pin whose preserve waste exceeds its discard waste goes
        (vectorized: it runs on every step over every pin)."""
        self.sync_view()
        pins = list(self.pins.pins.values())
        tokens = np.fromiter((p.tokens for p in pins), dtype=np.float64, count=len(pins))
        remaining = np.fromiter(
            (p.predicted_return - now for p in pins), dtype=np.float64, count=len(pins)
        )
        preserve, discard = paused_wastes(
            tokens, remaining, self.view.load, self.preset.cost, self.preset.saturation_tokens
        )
        for pin, drop in zip(pins, discard < preserve, strict=True):
            if drop:
                self.pins.release(pin.session_id, "infercept")

    def after_schedule(self, out: Any) -> None:
        for new in out.scheduled_new_reqs:
            prompt = len(new.prompt_token_ids or ())
            self.prefill_computed += max(prompt - new.num_computed_tokens, 0)
            self.prefill_cached += new.num_computed_tokens
            info = self.info.get(new.req_id)
            if info is not None and info.session_id in self.pins.pins:
                self.pins.release(info.session_id, "admitted")
        if self._stats_file and self.step % 50 == 0:
            self.write_stats()

    # -- turns out -----------------------------------------------------------------------------
    def on_free(self, request: Request) -> None:
        info = self.info.pop(request.request_id, None)
        self.keys.pop(request.request_id, None)
        if info is None or info.session_id is None:
            return
        if request.status not in _NORMAL_END:
            self.pins.release(info.session_id, "abort")
            return
        self.turns.turn_ended(info.session_id, request.num_output_tokens)
        if info.tool is None or self.config.policy == "vllm":
            return
        strategy = self._strategy(request, info)
        if strategy is KVStrategy.SWAP:
            if self.swap_available:
                setattr(request, SWAP_MARK, True)  # the host-swap connector copies it out
                self.swaps += 1
            else:
                self.swap_fallbacks += 1  # no host store on this engine: vLLM's discard + LRU
            return
        if strategy is KVStrategy.PRESERVE:
            blocks = self.sched.kv_cache_manager.get_blocks(request.request_id).blocks[0]
            ttl = min(
                self.config.ttl_factor * info.tool_duration + self.config.ttl_slack,
                self.config.ttl_max,
            )
            self.pins.pin(
                info.session_id,
                blocks,
                tokens=request.num_computed_tokens,
                tool_duration=info.tool_duration,
                ttl=ttl,
            )

    def _strategy(self, request: Request, info: TurnInfo) -> KVStrategy:
        if info.strategy is not None:
            return info.strategy
        self.sync_view()
        return choose_strategy(
            context_tokens=request.num_computed_tokens,
            tool_duration=info.tool_duration,
            preset=self.preset,
            load=self.view.load,
            swap_allowed=self.swap_available,
        )

    def on_abort(self, requests: list[Request]) -> None:
        for request in requests:
            info = self.info.get(request.request_id)
            if info is not None:
                self.pins.release(info.session_id, "abort")

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.config.policy,
            "step": self.step,
            "hints": asdict(self.turns.counters),
            "pins_active": len(self.pins.pins),
            "pinned_blocks": self.pins.pinned_blocks,
            "pins": asdict(self.pins.counters),
            "prefill_computed_tokens": self.prefill_computed,
            "prefill_cached_tokens": self.prefill_cached,
            "swaps": self.swaps,
            "swap_fallbacks": self.swap_fallbacks,
            "errors": self.errors,
            "free_blocks": self.pool.get_num_free_blocks(),
        }

    def write_stats(self) -> None:
        if self._stats_file:
            try:
                tmp = f"{self._stats_file}.tmp"
                with open(tmp, "w") as fh:
                    json.dump(self.stats(), fh)
                os.replace(tmp, self._stats_file)
            except OSError as exc:
                log.warning("lamps: cannot write stats to %s: %s", self._stats_file, exc)


class _LampsMixin:
    """The overrides, shared by the sync and async scheduler classes."""

    lamps: LampsCore

    def _lamps_init(self) -> None:
        sched: Any = self
        config = PluginConfig.load(getattr(sched.vllm_config, "additional_config", None))
        self.lamps = LampsCore(sched, config)
        if config.policy != "vllm":
            sched.waiting = LampsRequestQueue(
                key=self.lamps.key_of,
                step=lambda: self.lamps.step,
                starvation_threshold=config.starvation_threshold
                if config.policy == "lamps"
                else None,
            )
        log.info("lamps scheduler: policy=%s preset=%s", config.policy, config.preset)

    def add_request(self, request: Request) -> None:
        if request.request_id not in self.lamps.info:
            self.lamps.on_add(request)
        super().add_request(request)  # type: ignore[misc]

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self.lamps.before_schedule()
        out = super().schedule(*args, **kwargs)  # type: ignore[misc]
        self.lamps.after_schedule(out)
        return out

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        try:
            self.lamps.on_free(request)
        except Exception:
            self.lamps.errors += 1
            log.exception("lamps: turn-end handling failed for %s; discarding", request.request_id)
        return super()._free_request(request, delay_free_blocks)  # type: ignore[misc]

    def lamps_stats(self) -> dict[str, Any]:
        return self.lamps.stats()

    def shutdown(self) -> None:
        self.lamps.write_stats()
        self.lamps.pins.release_all("shutdown")
        super().shutdown()  # type: ignore[misc]


class LampsScheduler(_LampsMixin, Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lamps_init()


class LampsAsyncScheduler(_LampsMixin, AsyncScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lamps_init()
