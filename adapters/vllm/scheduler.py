"""``LampsScheduler``: vLLM's V1 scheduler driving the core scheduler, which makes every decision.

Load with ``--scheduler-cls adapters.vllm.scheduler.LampsScheduler`` (``LampsAsyncScheduler``
where vLLM schedules asynchronously, as on GPUs) and ``--additional-config '{"lamps": {"policy":
"lamps"}}'`` (or ``LAMPS_POLICY=lamps``).  Every registered policy runs; none is named here.

The plug-in translates and executes; the core :class:`~lamps_agent.scheduler.core.Scheduler`
decides:

* ``add_request`` — the hints (or a server-side estimate) become a core request; the core's policy
  predicts the turn and queues it.  vLLM's waiting queue is a view of the core's
  (:class:`~adapters.vllm.queue.LampsRequestQueue`): its order, and only what the policy's
  admission gate lets through.
* ``schedule`` — before vLLM's own pass: mirror the running requests and free blocks into the
  core, release the pins the core says to (expired, revisited, under pressure), and set aside the
  running requests the policy holds this step.  After it: the requests vLLM took are admitted in
  the core, and the pins of sessions whose next turn was admitted are released (the turn now holds
  its own references).
* ``_free_request`` — a turn ended: the core decides, from what happened and the predicted gap,
  whether its session's KV is preserved (pinned here), swapped (handed to the host-memory KV
  connector) or discarded (freed as vLLM does).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import vllm
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from adapters.vllm.config import PluginConfig, check_preset_engine, check_vllm_version
from adapters.vllm.lamps_core import LampsCore
from adapters.vllm.steplog import StepLog

log = logging.getLogger("lamps.vllm")


class _LampsMixin:
    """The overrides, shared by the sync and async scheduler classes.  Every call that may touch
    the block pool holds the plug-in's lock, so housekeeping can run while the engine is idle."""

    lamps: LampsCore
    steplog: StepLog | None = None
    # A step's wall time is schedule() to update_from_output() only when vLLM does not schedule
    # the next step before the last one's output (its async scheduler does).
    times_steps: bool = True
    # Whether the housekeeping thread expires pins while the engine idles (on wall time).  An
    # engine that owns its clock (adapters.vllm.tools.virtual) turns it off and expires them itself.
    housekeeping: bool = True

    def _lamps_init(self) -> None:
        sched: Any = self
        check_vllm_version(vllm.__version__)
        config = PluginConfig.load(getattr(sched.vllm_config, "additional_config", None))
        check_preset_engine(config, sched.vllm_config, vllm.__version__)
        self.lamps = self._lamps_core(config)
        sched.waiting = self.lamps.queue
        # The core orders by priority where vLLM was asked to (LampsCore read it): vLLM's own
        # priority victim rule is off, so its victim is ``running.pop()``, the core's choice.
        sched.policy = SchedulingPolicy.FCFS
        if self.housekeeping:
            self.lamps.housekeeper.start()
        path = os.environ.get("LAMPS_STEP_LOG")
        if path and self.times_steps:
            self.steplog = StepLog(path)
        elif path:
            log.warning("lamps: LAMPS_STEP_LOG ignored: steps overlap under async scheduling")
        log.info("lamps scheduler: policy=%s preset=%s", config.policy, config.preset)

    def _lamps_core(self, config: PluginConfig) -> LampsCore:
        """The plug-in's state for this scheduler (a subclass passes its clock and preset)."""
        return LampsCore(self, config)

    def add_request(self, request: Request) -> None:
        with self.lamps.lock:
            if request.request_id not in self.lamps.tracked:
                self.lamps.on_add(request)
            super().add_request(request)  # type: ignore[misc]

    def _enqueue_waiting_request(self, request: Request) -> None:
        with self.lamps.lock:
            super()._enqueue_waiting_request(request)  # type: ignore[misc]
            if self._holds_kv_blocks(request):  # type: ignore[attr-defined]
                self.lamps.hold_by_engine(request)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        with self.lamps.lock:
            if self.steplog is not None:
                self.steplog.begin()
            self.lamps.before_schedule()
            try:
                out = super().schedule(*args, **kwargs)  # type: ignore[misc]
            except BaseException:
                self.lamps.after_schedule_failed()
                raise
            self.lamps.after_schedule(out)
            if self.steplog is not None:
                sched: Any = self
                self.steplog.scheduled(out, sched.requests, self.lamps.used_blocks())
            return out

    def update_from_output(self, *args: Any, **kwargs: Any) -> Any:
        with self.lamps.lock:
            out = args[0] if args else kwargs.get("scheduler_output")
            self.lamps.step_ran(out)  # before the turns that end in it are decided
            result = super().update_from_output(*args, **kwargs)  # type: ignore[misc]
            if self.steplog is not None:
                self.steplog.end()
            return result

    def finish_requests(self, *args: Any, **kwargs: Any) -> Any:
        with self.lamps.lock:
            return super().finish_requests(*args, **kwargs)  # type: ignore[misc]

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        with self.lamps.lock:
            try:
                self.lamps.on_free(request)
            except Exception:
                self.lamps.errors += 1
                log.exception(
                    "lamps: turn-end handling failed for %s; discarding", request.request_id
                )
            result = super()._free_request(request, delay_free_blocks)  # type: ignore[misc]
            if not self.lamps.tracked:
                self.lamps.write_stats()  # the engine ran dry: what an idle engine holds
            return result

    def lamps_stats(self) -> dict[str, Any]:
        with self.lamps.lock:
            return self.lamps.stats()

    def shutdown(self) -> None:
        self.lamps.housekeeper.stop()
        with self.lamps.lock:
            self.lamps.release_all("shutdown")
            self.lamps.write_stats()
            if self.steplog is not None:
                self.steplog.close()
        super().shutdown()  # type: ignore[misc]


class LampsScheduler(_LampsMixin, Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lamps_init()


class LampsAsyncScheduler(_LampsMixin, AsyncScheduler):
    times_steps = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lamps_init()
