"""``ToolRegistry``: register tools, record their calls, estimate their durations.

See docs/tool-registry.md for the design (storage, batching, overflow, faults, the estimate).
"""

from __future__ import annotations

import asyncio
import builtins
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from lamps_agent.predictors.base import DurationEstimate
from tool_registry.aggregate import Aggregate
from tool_registry.describe import describe
from tool_registry.estimator import estimate_from, prior_estimate
from tool_registry.histogram import quantiles
from tool_registry.spill import DEFAULT_SPILL_DIR
from tool_registry.store import Store
from tool_registry.types import CallRecord, CallStatus, PendingTurn, ToolInfo, ToolStats, TurnRecord
from tool_registry.urls import resolve_url
from tool_registry.validation import (
    MAX_DURATION,
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    MAX_STEP,
    MAX_TURN_TOKENS,
    check_count,
    check_duration,
    check_label,
    check_name,
    check_size,
    check_timestamp,
    clip_prompt_text,
    is_plain_label,
    is_plain_name,
)
from tool_registry.writer import Writer

F = TypeVar("F", bound=Callable[..., object])
_STATUSES = {status.value: status for status in CallStatus}
_UNKNOWN = prior_estimate(None)  # what every unknown tool gets: shared, never cached per name


def _call_status(status: object) -> CallStatus:
    found = _STATUSES.get(status) if isinstance(status, str) else None  # a list is unhashable
    if found is None:
        raise ValueError(f"status must be one of {sorted(_STATUSES)}, got {status!r:.60}")
    return found


class ToolRegistry:
    """A registry of tools and their call durations, backed by SQLite (default) or PostgreSQL.

    ``url``: ``None`` means ``$LAMPS_REGISTRY_URL`` if set, else the SQLite file
    ``~/.lamps-agent/registry.db``; sync URLs (``sqlite:///x.db``, ``postgresql://u:p@h/db``) are
    mapped to the async drivers.  Calls are buffered and written in batches of ``batch_size`` or
    every ``flush_interval`` seconds; at most ``max_buffer`` records wait in memory, the rest go to
    a spill file under ``spill_dir`` (default ``~/.lamps-agent/spill``) and are replayed later.
    With ``handle_signals`` (created on the main thread), SIGTERM and SIGINT flush or spill the
    buffer before the application's own handler runs (:mod:`tool_registry.signals`).

    Raises :class:`~tool_registry.errors.RegistryUnavailableError` (a ``ConnectionError``) naming
    the URL, password masked, when the database cannot be reached or its schema created.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        batch_size: int = 512,
        flush_interval: float = 0.05,
        max_buffer: int = 100_000,
        spill_dir: str | os.PathLike[str] | None = None,
        handle_signals: bool = True,
    ) -> None:
        if batch_size < 1 or max_buffer < 1:
            raise ValueError("batch_size and max_buffer must be >= 1")
        if not math.isfinite(flush_interval) or flush_interval <= 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        self.url = resolve_url(url)
        self._aggregates: dict[str, Aggregate] = {}
        self._hints: dict[str, float | None] = {}
        # tool -> (aggregate, hint, estimate): valid while both are still the current ones, so a
        # writer update racing with a reader can never leave a stale estimate behind
        self._estimates: dict[str, tuple[Aggregate | None, float | None, DurationEstimate]] = {}
        self.num_sanitised = 0
        """Records whose text had NUL characters or lone surrogates (which no database stores)
        replaced by U+FFFD.  Prompt text is sanitised silently (it is clipped anyway)."""
        self._count_lock = threading.Lock()
        self._store = store = Store(self.url)
        self._writer = Writer(
            store,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            spill_dir=Path(spill_dir) if spill_dir is not None else DEFAULT_SPILL_DIR,
            on_aggregates=self._update_aggregates,
            on_load=self._load,
            handle_signals=handle_signals,
        )

    async def _load(self) -> None:
        self._update_hints(await self._store.list_tools())
        self._update_aggregates(await self._store.load_aggregates())

    def _update_hints(self, infos: list[ToolInfo]) -> None:
        for info in infos:
            self._hints[info.name] = info.duration_hint

    def _update_aggregates(self, aggregates: dict[str, Aggregate]) -> None:
        # Runs on the writer thread; readers see either the old or the new object, never a mix.
        self._aggregates.update(aggregates)

    # registration

    def register(
        self,
        tool: object,
        *,
        name: str | None = None,
        duration_hint: float | None = None,
        api_type: str | None = None,
        description: str | None = None,
    ) -> ToolInfo:
        """Register (or update) a tool: a LangChain ``BaseTool``, a plain callable, or a name.

        Arguments override what the tool says about itself (a LangChain tool's ``metadata`` may
        carry ``duration_hint`` and ``api_type``).  Re-registering updates the fields given.
        """
        info = self._tool_info(tool, name, duration_hint, api_type, description)
        stored = self._writer.call(self._store.upsert_tool(info))
        self._update_hints([stored])
        return stored

    async def aregister(
        self,
        tool: object,
        *,
        name: str | None = None,
        duration_hint: float | None = None,
        api_type: str | None = None,
        description: str | None = None,
    ) -> ToolInfo:
        """Async twin of :meth:`register`."""
        return await asyncio.to_thread(
            self.register,
            tool,
            name=name,
            duration_hint=duration_hint,
            api_type=api_type,
            description=description,
        )

    def tool(
        self,
        *,
        name: str | None = None,
        duration_hint: float | None = None,
        api_type: str | None = None,
        description: str | None = None,
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

        def decorate(func: F) -> F:
            self.register(
                func,
                name=name,
                duration_hint=duration_hint,
                api_type=api_type,
                description=description,
            )
            return func

        return decorate

    @staticmethod
    def _tool_info(
        tool: object,
        name: str | None,
        duration_hint: float | None,
        api_type: str | None,
        description: str | None,
    ) -> ToolInfo:
        facts = describe(tool)
        tool_name = name if name is not None else facts.name
        if tool_name is None:
            raise ValueError(f"cannot tell the name of {tool!r}; pass name=...")
        hint = duration_hint if duration_hint is not None else facts.duration_hint
        kind = api_type if api_type is not None else facts.api_type
        return ToolInfo(
            name=check_name(tool_name),
            description=description if description is not None else facts.description,
            api_type=check_label(kind, "api_type"),
            duration_hint=None if hint is None else check_duration(hint, "duration_hint"),
            registered_at=time.time(),
        )

    def get(self, name: str) -> ToolInfo | None:
        """The registered tool ``name``, or ``None``."""
        return self._writer.call(self._store.get_tool(name))

    def list(self) -> list[ToolInfo]:
        """Every registered tool (including tools only ever seen in ``record``), by name."""
        infos = self._writer.call(self._store.list_tools())
        self._update_hints(infos)
        return infos

    # recording

    def record(
        self,
        tool: str,
        *,
        duration: float,
        session_id: str | None = None,
        started_at: float | None = None,
        status: CallStatus | str = "ok",
        error_type: str | None = None,
        input_size: int | None = None,
        output_size: int | None = None,
    ) -> None:
        """Record one finished call; non-blocking and thread-safe, fine inside an event loop.

        ``started_at`` is epoch seconds (default: now minus ``duration``).  An unregistered tool
        is registered on its first write, without a hint.  Numbers may be NumPy scalars.

        The only exceptions are ``ValueError`` (bad input, raised here) and
        :class:`~tool_registry.errors.RegistryClosedError`: never an ``OSError``, even with the
        spill disk full (such a record is counted in :attr:`num_lost`).  Text no database can
        store (NUL, lone surrogates) is sanitised to U+FFFD and counted in :attr:`num_sanitised`.
        """
        sanitised = False
        if (
            type(tool) is not str
            or not 0 < len(tool) <= MAX_NAME_LENGTH
            or tool.isspace()
            or not tool.isascii()  # non-ASCII names are checked for lone surrogates there
            or "\x00" in tool
        ):
            name = check_name(tool)
            sanitised, tool = name != tool, name
        if type(duration) is not float or not 0.0 <= duration <= MAX_DURATION:
            duration = check_duration(duration)
        call_status = (
            status
            if type(status) is CallStatus
            else _STATUSES.get(status)
            if type(status) is str
            else None
        )
        if call_status is None:
            call_status = _call_status(status)  # raises the ValueError
        # the common case (short ASCII labels without NUL) costs no function call
        if session_id is not None and not (
            type(session_id) is str
            and len(session_id) <= MAX_LABEL_LENGTH
            and session_id.isascii()
            and "\x00" not in session_id
        ):
            label = check_label(session_id, "session_id")
            sanitised, session_id = sanitised or label != session_id, label
        if error_type is not None and not (
            type(error_type) is str
            and len(error_type) <= MAX_LABEL_LENGTH
            and error_type.isascii()
            and "\x00" not in error_type
        ):
            label = check_label(error_type, "error_type")
            sanitised, error_type = sanitised or label != error_type, label
        if input_size is not None or output_size is not None:
            input_size = check_size(input_size, "input_size")
            output_size = check_size(output_size, "output_size")
        started = time.time() - duration if started_at is None else check_timestamp(started_at)
        if sanitised:
            self._count_sanitised()
        self._writer.submit(
            (
                tool,
                session_id,
                started,
                duration,
                call_status.value,
                error_type,
                input_size,
                output_size,
            )
        )

    def _count_sanitised(self) -> None:
        with self._count_lock:
            self.num_sanitised += 1

    def record_turn(
        self,
        *,
        agent: str,
        step: int,
        output_tokens: int,
        prompt_tokens: int | None = None,
        tool: str | None = None,
        session_id: str | None = None,
        prompt_text: str | None = None,
    ) -> None:
        """Record one finished model turn, for training the output-length predictor; buffered and
        written like :meth:`record` (non-blocking, thread-safe, nothing lost).

        ``tool`` is the tool the reply called (``None``: a final answer).  ``prompt_text`` is
        stored only when given, and then only its last 2,000 characters: pass it only where the
        user opted in.  Bad input raises ``ValueError`` here.
        """
        if (  # the common case (plain labels, int counts, no text) costs three calls
            is_plain_name(agent)
            and is_plain_label(session_id)
            and (tool is None or is_plain_name(tool))
            and type(step) is int
            and 0 <= step <= MAX_STEP
            and type(output_tokens) is int
            and 0 <= output_tokens <= MAX_TURN_TOKENS
            and (
                prompt_tokens is None
                or (type(prompt_tokens) is int and 0 <= prompt_tokens <= MAX_TURN_TOKENS)
            )
            and prompt_text is None
        ):
            self._writer.submit(
                PendingTurn(
                    session_id, agent, step, tool, prompt_tokens, output_tokens, None, time.time()
                )
            )
            return
        turn = PendingTurn(
            session_id=check_label(session_id, "session_id"),
            agent=check_name(agent, "agent"),
            step=check_count(step, "step", maximum=MAX_STEP),
            tool=None if tool is None else check_name(tool),
            prompt_tokens=None
            if prompt_tokens is None
            else check_count(prompt_tokens, "prompt_tokens"),
            output_tokens=check_count(output_tokens, "output_tokens"),
            prompt_text=clip_prompt_text(prompt_text),
            created_at=time.time(),
        )
        if (turn.session_id, turn.agent, turn.tool) != (session_id, agent, tool):
            self._count_sanitised()
        self._writer.submit(turn)

    @property
    def pending(self) -> int:
        """Records accepted by :meth:`record` and not yet known to be in the database."""
        return self._writer.pending

    @property
    def num_spilled(self) -> int:
        """Records that overflowed the buffer (or were left at close) and went to the spill file."""
        return self._writer.num_spilled

    @property
    def num_lost(self) -> int:
        """Records accepted but lost: the spill file could not be written (a full or unwritable
        disk) while the buffer was full or at close.  Logged when it happens; never raised."""
        return self._writer.num_lost

    @property
    def num_dead_lettered(self) -> int:
        """Records the database rejected on their own (a batch split until the bad row was alone),
        kept in the dead-letter file ``<spill_dir>/<key>.dead-letter.jsonl`` instead."""
        return self._writer.num_dead_lettered

    @property
    def num_quarantined(self) -> int:
        """Spill-file lines that could not be read back (corrupt), moved to
        ``<spill_dir>/<key>.quarantine.jsonl``."""
        return self._writer.num_quarantined

    @property
    def num_failures(self) -> int:
        """Failed batch write attempts so far (each is retried)."""
        return self._writer.num_failures

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record so far is in the database or raise ``TimeoutError``."""
        self._writer.flush(timeout)

    async def aflush(self, timeout: float | None = None) -> None:
        """Async twin of :meth:`flush`."""
        await asyncio.to_thread(self._writer.flush, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush and release the database.  What cannot be written within ``timeout`` seconds is
        kept in the spill file and replayed by the next registry on the same database."""
        self._writer.close(timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Async twin of :meth:`close`."""
        await asyncio.to_thread(self._writer.close, timeout)

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ToolRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # estimates and statistics

    def estimate(self, tool: str) -> DurationEstimate:
        """The duration estimate of ``tool`` from the in-memory aggregates (never raises).

        Reflects the calls written so far (call :meth:`flush` to include buffered ones).  A tool
        never seen and without a hint gets ``DEFAULT_TOOL_DURATION`` with confidence 0.
        """
        try:
            agg, hint = self._aggregates.get(tool), self._hints.get(tool)
            if agg is None and hint is None:
                return _UNKNOWN  # not cached: unknown names must not grow memory
            cached = self._estimates.get(tool)
            if cached is not None and cached[0] is agg and cached[1] == hint:
                return cached[2]
            result = estimate_from(agg, hint)
        except Exception:  # noqa: BLE001 - the hot path must not fail (an unhashable name, a bug)
            return _UNKNOWN
        self._estimates[tool] = (agg, hint, result)
        return result

    def refresh(self) -> None:
        """Reload hints and aggregates from the database (other processes' writes); the writer
        also does this every 5 seconds."""
        self._writer.call(self._load())

    def stats(self, tool: str | None = None) -> builtins.list[ToolStats]:
        """Observed statistics (no prior) of ``tool``, or of every tool with calls, from the
        database's aggregates."""
        names = None if tool is None else [tool]
        aggregates = self._writer.call(self._store.load_aggregates(names))
        self._update_aggregates(aggregates)
        return [_tool_stats(name, agg) for name, agg in sorted(aggregates.items())]

    def iter_calls(
        self, tool: str | None = None, *, page_size: int = 10_000
    ) -> Iterator[CallRecord]:
        """Every recorded call (of ``tool``), in id order, fetched a page at a time."""
        after = None
        while True:
            query = self._store.calls_page(after=after, limit=page_size, tool=tool)
            page = self._writer.call(query)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].id

    def iter_turns(
        self, *, agent: str | None = None, page_size: int = 10_000
    ) -> Iterator[TurnRecord]:
        """Every recorded model turn (of ``agent``), in id order, fetched a page at a time."""
        after = None
        while True:
            page = self._writer.call(
                self._store.turns_page(after=after, limit=page_size, agent=agent)
            )
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].id

    async def astats(self, tool: str | None = None) -> builtins.list[ToolStats]:
        """Async twin of :meth:`stats`."""
        return await asyncio.to_thread(self.stats, tool)


def _tool_stats(name: str, agg: Aggregate) -> ToolStats:
    p50, p90, p99 = quantiles(agg.buckets, (0.5, 0.9, 0.99), lo=agg.min, hi=agg.max)
    return ToolStats(
        tool=name,
        count=agg.count,
        error_count=agg.error_count,
        mean=agg.mean,
        std=math.sqrt(agg.variance),
        min=agg.min if agg.count else 0.0,
        max=agg.max,
        p50=p50,
        p90=p90,
        p99=p99,
        ewma=agg.ewma,
        last_at=agg.last_at,
    )
