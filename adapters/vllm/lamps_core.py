"""``LampsCore``: the plug-in's state and its translation between vLLM and the core scheduler.

It holds no vLLM import (vLLM's objects are used by their attributes only), so it can be built
and tested without vLLM: :mod:`adapters.vllm.scheduler` binds it to vLLM's scheduler classes.
Every decision is the core :class:`~lamps_agent.scheduler.core.Scheduler`'s: this class reports
what vLLM did (a request arrived, a step ran, a turn ended, blocks ran short) and carries out the
answer (a pin taken or released, a copy out marked, the running order set).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from adapters.vllm.config import PluginConfig
from adapters.vllm.envelope import request_xargs
from adapters.vllm.execute import order_running, retry_allocation
from adapters.vllm.housekeeping import Housekeeper
from adapters.vllm.pins import PinStore
from adapters.vllm.queue import LampsRequestQueue
from adapters.vllm.turns import TurnInfo, TurnTracker
from lamps_agent.kv_memory import KVMemory
from lamps_agent.policies import make_policy
from lamps_agent.predictors import OraclePredictor
from lamps_agent.predictors.base import Outcome, Predictor
from lamps_agent.predictors.calibrated import CalibratedPredictor
from lamps_agent.presets import Preset, load_preset
from lamps_agent.program import Program, Segment
from lamps_agent.request import KVStrategy, RequestState
from lamps_agent.request import Request as CoreRequest
from lamps_agent.scheduler import PausedKV
from lamps_agent.scheduler import Scheduler as CoreScheduler

Request = Any  # a vLLM ``vllm.v1.request.Request``, used by its attributes

log = logging.getLogger("lamps.vllm")
SWAP_MARK = "_lamps_swap"  # read by adapters.vllm.connector.HostSwapConnector
_NORMAL_END = frozenset({"FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED"})  # RequestStatus names


@dataclass(slots=True)
class Tracked:
    """A vLLM request and the core request that stands for its turn."""

    core: CoreRequest
    info: TurnInfo


@dataclass(slots=True)
class DecisionCounters:
    preserve: int = 0
    swap: int = 0
    discard: int = 0
    finished: int = 0
    unpredicted_pauses: int = 0  # predicted "final answer", paused all the same
    advised_followed: int = 0  # the client's kv_strategy hint matched the decision
    advised_overruled: int = 0
    held_steps: int = 0  # running requests the policy held, summed over steps

    def count(self, strategy: KVStrategy | None) -> None:
        if strategy is None:
            self.finished += 1
        else:
            name = strategy.value
            setattr(self, name, getattr(self, name) + 1)


@dataclass(slots=True)
class _AwayTurn:
    """A session's turn that ended in a (possibly) tool call: its core request waits for the
    session's next turn, which the core sees as that tool's return."""

    core: CoreRequest
    info: TurnInfo
    output_tokens: int
    ended_at: float


MAX_TENANTS_COUNTED = 256  # tenant names the statistics keep apart
MAX_ENDED_FINAL = 100_000  # sessions remembered as ended on a final claim (for the calibration)
MAX_AWAY_SESSIONS = 50_000  # sessions that never come back are forgotten beyond this many


@dataclass(slots=True)
class _Held:
    index: int
    request: Request


def _mirror(request: Request, core: CoreRequest) -> None:
    """The core request advances as vLLM computed its turn."""
    core.kv_tokens = request.num_computed_tokens
    core.generated = request.num_output_tokens
    if core.generated > 0 and core.state is RequestState.PREFILLING:
        core.move_to(RequestState.DECODING)


def _arrival(request: Request) -> float | None:
    """When the request reached the server (vLLM's ``arrival_time``), if it says."""
    value = getattr(request, "arrival_time", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _priority_scheduling(sched: Any) -> bool:
    """vLLM's ``--scheduling-policy``: "priority" orders by the requests' priority first, and
    the core honours it (the plug-in's queue replaces vLLM's priority heap)."""
    policy = getattr(sched.scheduler_config, "policy", "fcfs")
    return str(getattr(policy, "value", policy)) == "priority"


class LampsCore:
    """The plug-in's state, kept apart from vLLM's class so both scheduler variants share it."""

    def __init__(
        self,
        sched: Any,
        config: PluginConfig,
        *,
        clock: Callable[[], float] = time.time,
        preset: Preset | None = None,
    ) -> None:
        """``sched``: vLLM's scheduler (its block pool, cache and scheduler configs, running
        list, requests and connector are read).  ``clock``: seconds now, wall time served (the
        virtual-clock engine passes its own).  ``preset``: the cost model's preset, given as an
        object instead of ``config.preset`` by name (the virtual-clock engine's)."""
        self.sched = sched
        self.config = config
        self.clock = clock
        if preset is None:
            preset = load_preset(config.preset, config_file=config.preset_file or None)
        # The connector copies KV out only at a turn's end: pinned KV can only be freed.
        self.preset = dataclasses.replace(
            preset, pin_swap=False, max_model_len=int(sched.max_model_len)
        )
        pool = sched.kv_cache_manager.block_pool
        self.pool = pool
        self.block_size = sched.cache_config.block_size
        connector = getattr(sched, "connector", None)
        self.swap_available = type(connector).__name__ == "HostSwapConnector"
        host_blocks = int(getattr(connector, "capacity_blocks", 0)) if self.swap_available else 0
        memory = KVMemory(
            # all but vLLM's null block (block 0, never free): the blocks requests can hold, as
            # the simulator's preset counts them (a policy sizing by the total saw one more)
            num_gpu_blocks=max(pool.num_gpu_blocks - 1, 1),
            num_host_blocks=max(host_blocks, 0),
            block_size=self.block_size,
        )
        # The hints are the predictions: an oracle over segments built from them, discounted by
        # each client's calibration (the clients' word, as the simulator's --calibrate).
        predictor: Predictor = OraclePredictor()
        if config.calibrate:
            predictor = CalibratedPredictor(predictor)
        self.predictor = predictor
        policy = make_policy(
            config.policy, predictor=predictor, preset=self.preset, **config.policy_options
        )
        self.core = CoreScheduler(
            preset=self.preset,
            policy=policy,
            memory=memory,
            pin_lifetime=config.pin_lifetime,
            priority_scheduling=_priority_scheduling(sched),
        )
        self.policy = policy
        self.turns = TurnTracker(default_output_tokens=config.default_output_tokens, clock=clock)
        self.pins = PinStore(touch=pool.touch, free=pool.free_blocks)
        self.tracked: dict[str, Tracked] = {}
        self.away: dict[str, _AwayTurn] = {}  # session id -> its paused turn
        # Requests vLLM queues apart because they already hold KV blocks (a remote prefill
        # landing, a resumable stream): vLLM drains them first, outside the plug-in's queue.
        self.engine_held: dict[str, CoreRequest] = {}
        self.decisions = DecisionCounters()
        self.tenant_turns: Counter[str] = Counter()  # turns read per tenant (stats)
        # session id -> (tenant, program id) of a program that ended on a turn claimed final
        self._ended_final: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self.step = 0
        self.prefill_computed = 0
        self.prefill_cached = 0
        self.swaps = 0
        self.swap_fallbacks = 0
        self.errors = 0
        self._ids = 0
        self._held: list[_Held] = []
        self._stats_file = os.environ.get("LAMPS_STATS_FILE")
        self.lock = threading.RLock()  # the engine thread's scheduler calls vs housekeeping
        self.housekeeper = Housekeeper(
            lock=self.lock,
            expire=self.expire_idle,
            write_stats=self.write_stats if self._stats_file else None,
        )
        self.queue = LampsRequestQueue(
            scheduler=self.core, core_of=self.core_of, before_walk=self._sync_free_blocks
        )
        retry_allocation(sched.kv_cache_manager, self.release_for)

    def core_of(self, request: Request) -> CoreRequest | None:
        tracked = self.tracked.get(request.request_id)
        return tracked.core if tracked is not None else None

    # -- requests in -------------------------------------------------------------------------
    def on_add(self, request: Request) -> None:
        try:
            params = request.sampling_params
            info = self.turns.read(
                request_xargs(request),  # the KV-hint envelope's, else extra_args
                request.session_id,
                request.priority,
                getattr(params, "max_tokens", None) if params is not None else None,
                _arrival(request),
            )
            self._set_clock()
            # the turn is planned on the engine's load now (the simulator's view at an arrival),
            # not as it stood when the last step was scheduled
            self._mirror_running()
            away = self.away.pop(info.session_id, None) if info.session_id else None
            self._came_back(info.session_id, away)
            core = self._returned(away, request, info) if away is not None else None
            if core is None:
                core = self._core_request(request, info)
                core.priority = request.priority
                self._credit_pin(core, info.session_id)
                # A session's later turn queues as a returning turn: stock order puts it at the
                # back (it is a new request to vLLM), not at the session's start.
                hist = self.turns.sessions.get(info.session_id) if info.session_id else None
                later = hist is not None and hist.turns > 0
                self.core.add_request(core, resumed=later)
            self.tracked[request.request_id] = Tracked(core, info)
            self._count_tenant(info.tenant)
        except Exception:
            self.errors += 1
            self.tracked.pop(request.request_id, None)
            log.exception("lamps: could not read request %s; FCFS for it", request.request_id)

    def _came_back(self, sid: str | None, away: _AwayTurn | None) -> None:
        """A session whose last program ended on a turn claimed final sent another turn: that
        claim was false, and the calibration hears it (a paused turn's own outcome says so
        when the session was kept ``away``)."""
        ended = self._ended_final.pop(sid, None) if sid is not None else None
        refute = getattr(self.predictor, "refute_final", None)
        if ended is not None and away is None and refute is not None:
            refute(tenant=ended[0], program_id=ended[1])

    def _count_tenant(self, tenant: str | None) -> None:
        """Turns per tenant for the statistics: the first ``MAX_TENANTS_COUNTED`` names, the
        rest together (names come from clients unless the server derives them)."""
        name = tenant if tenant is not None else "(none)"
        if name not in self.tenant_turns and len(self.tenant_turns) >= MAX_TENANTS_COUNTED:
            name = "(others)"
        self.tenant_turns[name] += 1

    @staticmethod
    def _turn_segments(prompt: int, info: TurnInfo) -> tuple[Segment, ...]:
        """This turn as predicted (and, if a tool call is predicted, the turn after it)."""
        output = max(round(info.output_tokens), 1)
        first = Segment(
            prompt_tokens=prompt,
            output_tokens=output,
            tool=info.tool,
            tool_duration=info.tool_duration,
        )
        if info.tool is None:
            return (first,)
        return (first, Segment(prompt_tokens=prompt + output, output_tokens=1))

    def _returned(self, away: _AwayTurn, request: Request, info: TurnInfo) -> CoreRequest | None:
        """The session's next turn arrived: for the core, the tool of its paused turn returned
        (:meth:`~lamps_agent.scheduler.core.Scheduler.tool_returned`, with what really happened:
        the turn's output, the gap as the tool's duration, the tokens the tool added), and the
        same core request goes on with this turn.  None when the new prompt does not extend
        the session's context (the client rewrote it): the session starts afresh."""
        core = away.core
        if not core.is_paused:
            return None
        prompt = max(request.num_prompt_tokens, 1)
        seg = core.segment
        context = seg.prompt_tokens + away.output_tokens
        if prompt < context or away.output_tokens < 1:
            self.core.abort(core)
            self._drop_pin(info.session_id, "rewritten")
            return None
        outcome = Outcome(
            output_tokens=away.output_tokens,
            tool=away.info.tool or "unknown",
            # until the next turn reached the server (vLLM's arrival time), not until this
            # step saw it: a step in progress is not the tool's time (the simulator's gap)
            tool_duration=max((_arrival(request) or self.clock()) - away.ended_at, 0.0),
            returned_tokens=prompt - context,
        )
        ended = Segment(
            prompt_tokens=seg.prompt_tokens,
            output_tokens=max(away.output_tokens, 1),
            tool=outcome.tool,
            tool_duration=outcome.tool_duration,
            returned_tokens=outcome.returned_tokens,
        )
        program = core.program
        core.program = dataclasses.replace(
            program,
            segments=(
                *program.segments[: core.seg_index],
                ended,
                *self._turn_segments(prompt, info),
            ),
        )
        self.core.tool_returned(core, outcome, key=info.session_id)
        core.priority = request.priority
        self._credit_pin(core, info.session_id)
        return core

    def _core_request(self, request: Request, info: TurnInfo) -> CoreRequest:
        """A session's first turn as the core sees it, arriving when the session first
        arrived."""
        segments = self._turn_segments(max(request.num_prompt_tokens, 1), info)
        hist = self.turns.sessions.get(info.session_id) if info.session_id else None
        self._ids += 1
        return CoreRequest(
            request_id=self._ids,
            program=Program(
                program_id=request.request_id,
                agent=info.agent or "vllm",
                segments=segments,
                session_id=info.session_id,
                first_step=info.step,
                tenant=info.tenant,
            ),
            arrival_time=hist.first_arrival if hist is not None else request.arrival_time,
        )

    # -- every step ----------------------------------------------------------------------------
    def _set_clock(self) -> None:
        self.core.set_time(self.clock())
        self.core.iteration = self.step
        self._sync_free_blocks()

    def _sync_free_blocks(self) -> None:
        self.core.memory.free_gpu_blocks = min(
            self.pool.get_num_free_blocks(), self.core.memory.num_gpu_blocks
        )

    def step_ran(self, out: Any) -> None:
        """A step's output is in: the core's view learns the step's batch (its query tokens),
        as the simulator's does before the turns that end in the step are decided."""
        tokens = getattr(out, "total_num_scheduled_tokens", None)
        if isinstance(tokens, int):
            self.core.view.batch_query_tokens = tokens
        # the core's iteration counts the steps that ran, as the simulator's does: the step
        # being scheduled is the next one
        self.step += 1

    def _mirror_running(self) -> None:
        """The core's running requests advance as vLLM computed them."""
        for request in self.sched.running:
            core = self.core_of(request)
            if core is not None:
                self._advance(request, core)

    def _advance(self, request: Request, core: CoreRequest) -> None:
        """``core`` advances as vLLM computed ``request``; its first token, if it has one now."""
        _mirror(request, core)
        if core.generated > 0:
            self.core.note_first_token(core)

    def before_schedule(self) -> None:
        self._set_clock()
        self._mirror_running()
        self.core.sync_view()
        self.expire_pins()
        for paused, _ in self.core.revisit_paused():  # a discard: the core knows pin_swap is off
            self._release(paused, "revisit")
        order_running(self.sched.running, self.core, self.core_of)
        self._hold_running()  # asked in the running order, as the core asks
        self.queue.new_step()

    def expire_pins(self) -> None:
        """Release the pins whose time to live ran out at the core's clock."""
        for paused in self.core.expire_pins():
            self._release(paused, "ttl")

    def expire_idle(self) -> None:
        """Housekeeping on an engine that may not be scheduling: set the clock, then expire."""
        if self.pins.pins:
            self._set_clock()
            self.expire_pins()

    def release_for(self, request: Request) -> bool:
        """vLLM could not allocate ``request``'s blocks: release the pin the core gives up first
        (never the request's own session's).  False when no pin is left, and vLLM preempts."""
        tracked = self.tracked.get(request.request_id)
        paused = self.core.pin_to_release(
            exclude=tracked.info.session_id if tracked is not None else None
        )
        if paused is None:
            return False
        self._release(paused, "pressure")
        return True

    def _hold_running(self) -> None:
        """Policies that hold resident requests (Nested WAIT): set them aside for this step."""
        if not self.policy.uses_holds:
            return
        self.policy.begin_iteration(self.core.running_order())
        running = self.sched.running
        keep = []
        for index, request in enumerate(running):
            core = self.core_of(request)
            if core is not None and self.policy.hold(core):
                self._held.append(_Held(index, request))
            else:
                keep.append(request)
        if self._held:
            self.decisions.held_steps += len(self._held)
            running[:] = keep

    def _restore_held(self) -> None:
        if self._held:
            running = self.sched.running
            for held in self._held:
                running.insert(min(held.index, len(running)), held.request)
            self._held.clear()

    def after_schedule_failed(self) -> None:
        self._restore_held()
        self.queue.end_step()

    def hold_by_engine(self, request: Request) -> None:
        """vLLM queued ``request`` with the requests that hold KV blocks, which it admits first
        and by itself: it leaves the core's waiting queue (the plug-in's queue never gives it)
        and is admitted in the core when vLLM runs it."""
        core = self.core_of(request)
        if core is not None and core in self.core.waiting:
            self.core.take(core)
            self.engine_held[request.request_id] = core

    def _admit_engine_held(self) -> None:
        for rid, core in list(self.engine_held.items()):
            request = self.sched.requests.get(rid)
            if request is None:
                del self.engine_held[rid]
            elif request.status.name == "RUNNING":
                del self.engine_held[rid]
                self.core.admit_taken(core)

    def after_schedule(self, out: Any) -> None:
        self._restore_held()
        if self.engine_held:
            self._admit_engine_held()
        for core in self.queue.end_step():
            sid = core.program.session_id  # the session's turns share one core request
            if sid is not None:
                paused = self.core.resume_paused(sid)
                if paused is not None:
                    self.pins.release(sid, "admitted")
        for new in out.scheduled_new_reqs:
            prompt = len(new.prompt_token_ids or ())
            self.prefill_computed += max(prompt - new.num_computed_tokens, 0)
            self.prefill_cached += new.num_computed_tokens

    def _credit_pin(self, core: CoreRequest, session_id: str | None) -> None:
        """A later turn whose session's KV is pinned waits with that KV resident, as a preserved
        turn waits in the simulator: the policy sees only its new tokens as prefill to place.
        (A vLLM request starts with no computed tokens, so a gate that waits for room for the
        whole context would count the pinned blocks twice: once as used, once as needed.)"""
        blocks = self.pins.pins.get(session_id) if session_id is not None else None
        if blocks:
            core.kv_tokens = min(len(blocks) * self.block_size, core.segment.prompt_tokens)

    def _release(self, paused: PausedKV, reason: str) -> None:
        sid = str(paused.key)
        request = paused.request
        if request is not None and request.state is RequestState.PAUSED_PRESERVED:
            # The plug-in can only free a pin: whatever the strategy, the core's turn is
            # discarded (its blocks stay in vLLM's prefix cache until evicted).
            self.core.drop_preserved(paused, KVStrategy.DISCARD)
        if self.pins.release(sid, reason):
            # The session's waiting turn no longer has that KV resident.
            for tracked in self.tracked.values():
                core = tracked.core
                if tracked.info.session_id == sid and core.state is RequestState.WAITING:
                    core.kv_tokens = 0

    # -- turns out -----------------------------------------------------------------------------
    def on_free(self, request: Request) -> None:
        tracked = self.tracked.pop(request.request_id, None)
        if tracked is None:
            return
        core, info = tracked.core, tracked.info
        self.queue.forget(core)
        self.engine_held.pop(request.request_id, None)
        self._set_clock()
        sid = info.session_id
        if request.status.name not in _NORMAL_END:
            self.core.abort(core)
            if sid is not None and self.core.resume_paused(sid) is not None:
                self.pins.release(sid, "abort")
            return
        self._advance(request, core)  # a turn may end in the step of its first token
        continues = self.turns.may_continue(info)
        self.turns.turn_ended(info, request.num_output_tokens)
        outcome = Outcome(
            output_tokens=request.num_output_tokens,
            tool=info.tool,
            tool_duration=info.tool_duration,
            returned_tokens=0,
        )
        if sid is not None and self.core.resume_paused(sid) is not None:
            self.pins.release(sid, "replaced")  # a session holds at most one pin
        if sid is not None and info.hinted and info.tool is None:
            self._ended_final[sid] = (info.tenant, core.program.program_id)
            if len(self._ended_final) > MAX_ENDED_FINAL:
                self._ended_final.popitem(last=False)
        blocks = self._pinnable(request) if continues else []
        strategy = self.core.end_turn(
            core,
            outcome,
            continues=continues,
            key=sid,
            blocks=len(blocks),
            gap=self._gap(info),
            override=info.strategy if self.config.client_strategy == "obey" else None,
        )
        self._count(info, strategy)
        if sid is None or strategy is None:
            return
        self._keep_away(sid, _AwayTurn(core, info, request.num_output_tokens, self.clock()))
        if strategy is KVStrategy.SWAP:
            # The next turn is a new request; the connector's LRU store keeps the copy.
            self.core.release_host_copy(core)
            if self.swap_available:
                setattr(request, SWAP_MARK, True)  # the host-swap connector copies it out
                self.swaps += 1
            else:
                self.swap_fallbacks += 1  # no host store on this engine: vLLM's discard + LRU
        elif strategy is KVStrategy.PRESERVE:
            if blocks:
                self.pins.pin(sid, blocks)
            else:
                empty = self.core.resume_paused(sid)  # nothing full to keep
                if empty is not None:
                    self._release(empty, "empty")

    def _keep_away(self, sid: str, away: _AwayTurn) -> None:
        earlier = self.away.pop(sid, None)
        if earlier is not None and earlier.core is not away.core:
            self.core.abort(earlier.core)  # a session's turns ran side by side
        if len(self.away) >= MAX_AWAY_SESSIONS:  # the oldest half never came back
            for old in list(self.away)[: len(self.away) // 2]:
                self.core.abort(self.away.pop(old).core)
                self._drop_pin(old, "forgotten")
        self.away[sid] = away

    def _drop_pin(self, sid: str | None, reason: str) -> None:
        if sid is not None and self.core.resume_paused(sid) is not None:
            self.pins.release(sid, reason)

    def _pinnable(self, request: Request) -> list[Any]:
        blocks = self.sched.kv_cache_manager.get_blocks(request.request_id).blocks[0]
        return PinStore.pinnable(blocks)

    def _gap(self, info: TurnInfo) -> float | None:
        """The predicted pause: the hinted tool's duration, else the session's mean gap between
        turns (None: the core's default for an unknown gap)."""
        if info.tool is not None:
            return info.tool_duration
        return self.turns.mean_gap(info.session_id)

    def _count(self, info: TurnInfo, strategy: KVStrategy | None) -> None:
        self.decisions.count(strategy)
        if strategy is None:
            return
        if info.tool is None:
            self.decisions.unpredicted_pauses += 1
        if info.strategy is not None:
            if info.strategy is strategy:
                self.decisions.advised_followed += 1
            else:
                self.decisions.advised_overruled += 1

    def release_all(self, reason: str) -> None:
        for sid in list(self.pins.pins):
            self.core.resume_paused(sid)
            self.pins.release(sid, reason)

    def used_blocks(self) -> int:
        # All blocks less the free ones and vLLM's null block.
        return int(self.pool.num_gpu_blocks - 1 - self.pool.get_num_free_blocks())

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.config.policy,
            "step": self.step,
            "hints": asdict(self.turns.counters),
            "decisions": asdict(self.decisions),
            "waiting": len(self.core.waiting),
            "pins_active": len(self.pins.pins),
            "pinned_blocks": self.pins.pinned_blocks,
            "pins": asdict(self.pins.counters),
            "prefill_computed_tokens": self.prefill_computed,
            "prefill_cached_tokens": self.prefill_cached,
            "swaps": self.swaps,
            "swap_fallbacks": self.swap_fallbacks,
            "pin_swaps_discarded": self.core.counters.pin_swaps_discarded,
            "errors": self.errors,
            "free_blocks": self.pool.get_num_free_blocks(),
            "usable_blocks": self.pool.num_gpu_blocks - 1,  # all but vLLM's null block
            "gate_held_steps": self.queue.gate_held_steps,
            "first_turn_waits": self.core.first_turn_waits.summary(),
            "tenant_turns": dict(self.tenant_turns),
            "hints_discounted": getattr(self.predictor, "discounted", 0),
            "tenant_hints_discounted": {
                "(none)" if t is None else t: n
                for t, n in getattr(self.predictor, "discounted_by", {}).items()
            },
            "policy_state": self.policy.state(),
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
