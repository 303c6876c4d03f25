"""A callback handler that records tool durations, for agents the middleware cannot reach.

Legacy ``AgentExecutor`` agents (``langchain-classic``) and hand-written loops run tools without
``create_agent``'s middleware, but they do fire callbacks.  :class:`LampsToolCallbackHandler`
times every tool run from ``on_tool_start`` to ``on_tool_end`` / ``on_tool_error`` and records it
in the tool registry (and teaches the planner's predictor).  Callbacks observe; they cannot change
requests, so pair it with :func:`adapters.langchain.wrap` for the hints.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from adapters.langchain.planner import CallStatus, HintPlanner, ToolRecorder


@dataclass(slots=True)
class _Run:
    tool: str
    session_id: str
    call_id: str | None
    input_size: int
    started_at: float
    t0: float


class LampsToolCallbackHandler(BaseCallbackHandler):
    """Records each tool run's duration and status in a tool registry.

    Args:
        registry: the tool registry (ignored when ``planner`` is given: its registry is used).
        planner: share the predictor and registry of a ``LampsMiddleware`` / ``wrap``-ped model.
        session_id: a fixed session for every call; by default the run's ``thread_id`` metadata,
            else the id of the run that called the tool (the agent executor's run).
    """

    run_inline = True  # time the tool on its own thread, not on a callback executor

    def __init__(
        self,
        *,
        registry: ToolRecorder | None = None,
        planner: HintPlanner | None = None,
        session_id: str | None = None,
    ) -> None:
        if planner is None and registry is None:
            raise ValueError("give a registry or a planner")
        if session_id is not None and (not isinstance(session_id, str) or not session_id):
            raise ValueError("session_id must be a non-empty string")
        self.planner = planner if planner is not None else HintPlanner(registry=registry)
        self.session_id = session_id
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        metadata = metadata or {}
        name = kwargs.get("name") or (serialized or {}).get("name") or "unknown"
        session = (
            self.session_id
            or metadata.get("lamps_session_id")
            or metadata.get("thread_id")
            or f"run-{parent_run_id or run_id}"
        )
        run = _Run(
            tool=str(name),
            session_id=str(session),
            call_id=kwargs.get("tool_call_id"),
            input_size=len(input_str),
            started_at=time.time(),
            t0=time.perf_counter(),
        )
        with self._lock:
            self._runs[run_id] = run
        self.planner.tool_started(run.session_id, run.tool, run.call_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        content = getattr(output, "content", output)
        self._finish(
            run_id, "ok", None, len(content) if isinstance(content, str) else len(str(content))
        )

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, "error", type(error).__name__, None)

    def _finish(
        self, run_id: UUID, status: CallStatus, error_type: str | None, output_size: int | None
    ) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return
        self.planner.tool_finished(
            session_id=run.session_id,
            tool=run.tool,
            call_id=run.call_id,
            started_at=run.started_at,
            duration=time.perf_counter() - run.t0,
            status=status,
            error_type=error_type,
            input_size=run.input_size,
            output_size=output_size,
        )
