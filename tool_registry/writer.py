"""The background writer: a bounded buffer filled by ``record()`` and drained in batches by a thread
that owns its own asyncio loop and the async engine.

``submit`` (the caller's side; ``record()`` or ``record_turn()`` has validated the item) takes a
lock and appends it: a call as a plain tuple, a model turn as a ``PendingTurn`` named tuple; it
wakes the writer when a batch is full.  Calls and turns share the buffer, the batches, the retries
and the spill file.  The writer writes when ``batch_size`` records are waiting or
``flush_interval`` seconds have passed, up to ``MAX_BATCHES_PER_WRITE`` batches in one transaction
when a backlog has built up.  A failed batch stays "in flight" and is retried with
exponential back-off (``BACKOFF_BASE_S`` doubling up to ``BACKOFF_MAX_S``) until it commits; the
same record ids are sent each time, so a batch whose commit was acknowledged late adds nothing
twice.  When the buffer holds ``max_buffer`` records, further records go to the spill file
(:mod:`tool_registry.spill`) and are replayed once the buffer has drained: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tool_registry import spill
from tool_registry.aggregate import Aggregate
from tool_registry.errors import RegistryClosedError
from tool_registry.ids import new_id, new_ids
from tool_registry.store import Store
from tool_registry.types import PendingCall, PendingTurn, Row, with_id

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
REFRESH_INTERVAL_S = 5.0  # how often aggregates written by other processes are reloaded
STARTUP_TIMEOUT_S = 60.0
MAX_BATCHES_PER_WRITE = 16  # with a backlog, one transaction takes up to 16 batches


_LIVE_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The writer thread does not survive a fork: the child's copy must not buffer into the void
    # (nor hang at exit waiting for it).  The parent's registry is unaffected.
    for writer in list(_LIVE_WRITERS):
        writer.disown()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("tool registry writer stopped: %r; records stay pending", task.exception())


class Writer:
    """Owns the buffer, the writer thread and its loop; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        spill_dir: Path,
        on_aggregates: Callable[[dict[str, Aggregate]], None],
        on_load: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        """``on_load`` reloads hints and aggregates: at start and every ``REFRESH_INTERVAL_S``;
        ``on_aggregates`` receives the fresh aggregates of the tools of each written batch."""
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._on_aggregates = on_aggregates
        self._on_load = on_load
        self._lock = threading.Lock()
        self._settled_cond = threading.Condition()
        self._buffer: deque[PendingCall | PendingTurn] = deque()
        self._inflight: list[Row] = []
        self._spill = spill.SpillFile(spill_dir, store.url)
        self._replay: list[tuple[Path, int]] = []  # spill files to replay, with their line counts
        self._replay_left = 0  # records in those files not yet handed to _write
        self.closed = False
        self._closed_reason = "that is closed"
        self.num_accepted = 0  # records accepted by submit (buffered or spilled)
        self.num_settled = 0  # records known to be in the database (or torn spill lines)
        self.num_inserted = 0  # rows this writer inserted (duplicates on retry excluded)
        self.num_spilled = 0  # records that went through the spill file
        self.num_failures = 0  # failed batch attempts
        self.last_error: BaseException | None = None
        self._flush_target = 0
        self._abort = False
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run_loop, name="tool-registry-writer", daemon=True
        )
        self._main_task: asyncio.Task[None] | None = None
        self._thread.start()
        try:
            self.call(self._start(), timeout=STARTUP_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            self._spill.close()
            raise
        atexit.register(self.close)
        _LIVE_WRITERS.add(self)

    # caller side

    @property
    def pending(self) -> int:
        """Records accepted but not yet known to be in the database."""
        return len(self._buffer) + len(self._inflight) + self._spill.num_lines + self._replay_left

    def submit(self, item: PendingCall | PendingTurn) -> None:
        """Buffer a validated call or turn (or spill it when the buffer is full)."""
        with self._lock:
            if self.closed:
                raise RegistryClosedError(f"record() on a ToolRegistry {self._closed_reason}")
            self.num_accepted += 1
            if len(self._buffer) >= self.max_buffer:
                self._spill.write((with_id(new_id(), item),))
                self.num_spilled += 1
                return
            self._buffer.append(item)
            full = len(self._buffer) == self.batch_size
        if full:
            self._loop.call_soon_threadsafe(self._wake.set)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the writer loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the tool registry did not answer within {timeout} s") from None

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record accepted so far is in the database (or ``TimeoutError``)."""
        with self._lock:
            target = self.num_accepted
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._settled_cond:
            self._flush_target = max(self._flush_target, target)
        self._loop.call_soon_threadsafe(self._wake.set)
        with self._settled_cond:
            while self.num_settled < target or self._spill.num_lines or self._replay:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"tool registry flush timed out with {self.pending} records pending "
                        f"(last error: {self.last_error!r})"
                    )
                self._settled_cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def disown(self) -> None:
        """In a forked child: refuse further records; the parent still owns the buffer."""
        self.closed = True
        self._closed_reason = "in a process forked after it was created; open a new ToolRegistry"
        self._buffer = deque()
        self._lock = threading.Lock()  # another thread may have held it at the fork
        atexit.unregister(self.close)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer and release the engine.  Records that cannot be written within
        ``timeout`` seconds go to the spill file, to be replayed by the next registry."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        atexit.unregister(self.close)
        try:
            self.flush(timeout)
        except TimeoutError:
            self._abort = True
            self._loop.call_soon_threadsafe(self._wake.set)
        self._stop_loop()
        leftover = self._inflight + [with_id(new_id(), item) for item in self._buffer]
        if leftover:
            self._spill.write(leftover)
            self.num_spilled += len(leftover)
            self._inflight.clear()
            self._buffer.clear()
        if self.pending:
            log.warning(
                "tool registry closed with %d records not written to %s; they are kept in %s "
                "and will be replayed by the next registry on this database",
                self.pending,
                self.store.masked_url,
                self._spill.directory,
            )
        self._spill.close()

    # writer side

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def _stop_loop(self) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._main_task is not None:
                self._abort = True
                self._wake.set()
                await asyncio.gather(self._main_task, return_exceptions=True)
            await self.store.dispose()

        try:
            self.call(stop(), timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    async def _start(self) -> None:
        await self.store.open()
        await self._on_load()
        for path, count in self._spill.claim_orphans():
            self._add_replay(path, count)
            with self._lock:
                self.num_accepted += count  # so a flush() also waits for them
        self._main_task = asyncio.get_running_loop().create_task(self._main())
        self._main_task.add_done_callback(_log_crash)

    def _has_work(self) -> bool:
        return (
            bool(self._inflight)
            or len(self._buffer) >= self.batch_size
            or (bool(self._buffer) and self.num_settled < self._flush_target)
        )

    async def _main(self) -> None:
        last_refresh = time.monotonic()
        while not self._abort:
            if not self._has_work():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                self._wake.clear()
                if self._abort:
                    break
            batch = self._take_batch()
            if batch:
                await self._write(batch)
            elif self._replay or self._spill.num_lines:
                await self._replay_spill()
            if time.monotonic() - last_refresh > REFRESH_INTERVAL_S:  # even under steady load
                last_refresh = time.monotonic()
                await self._refresh()

    def _take_batch(self) -> list[Row]:
        if self._inflight:
            return self._inflight
        with self._lock:
            count = min(len(self._buffer), self.batch_size * MAX_BATCHES_PER_WRITE)
            pending = [self._buffer.popleft() for _ in range(count)]
        # ids are given once, here: a retry sends the very same rows
        self._inflight = [
            (row_id, *item) if type(item) is tuple else with_id(row_id, item)
            for row_id, item in zip(new_ids(count), pending, strict=True)
        ]
        return self._inflight

    async def _write(self, batch: list[Row], *, may_exist: bool = False) -> bool:
        """Write ``batch`` (already in flight), retrying until it commits or the writer aborts."""
        attempt = 0
        while True:
            try:
                retry = may_exist or attempt > 0  # an earlier try may have committed unseen
                inserted, aggregates = await self.store.write_batch(batch, may_exist=retry)
            except Exception as exc:  # noqa: BLE001 - retry all: input was validated upstream
                self.num_failures += 1
                self.last_error = exc
                if attempt == 0 or attempt % 10 == 0:
                    log.warning(
                        "tool registry: writing %d records to %s failed (try %d, %d pending): %s",
                        len(batch),
                        self.store.masked_url,
                        attempt + 1,
                        self.pending,
                        exc,
                    )
                if self._abort:
                    return False
                delay = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_abort(), delay)
                continue
            self._on_aggregates(aggregates)
            with self._settled_cond:
                self._inflight = []
                self.num_inserted += inserted
                self.num_settled += len(batch)
                self._settled_cond.notify_all()
            return True

    async def _wait_abort(self) -> None:
        while not self._abort:
            await asyncio.sleep(0.02)

    def _add_replay(self, path: Path, count: int) -> None:
        self._replay.append((path, count))
        self._replay_left += count

    async def _replay_spill(self) -> None:
        """Write the spill files back a batch at a time; a file is deleted once all of it is in."""
        with self._lock:
            taken = self._spill.take()
        if taken is not None:
            self._add_replay(*taken)
        while self._replay:
            path, count = self._replay[0]
            records = spill.read(path)
            torn = count - len(records)  # torn lines (a crash mid-write) are skipped
            self._replay_left -= torn
            with self._settled_cond:
                self.num_settled += torn  # accounted for (and logged by spill.read)
            left = len(records)
            for start in range(0, len(records), self.batch_size):
                batch = records[start : start + self.batch_size]
                self._inflight = batch
                self._replay_left -= len(batch)
                left -= len(batch)
                if not await self._write(batch, may_exist=True):
                    self._replay_left += left  # the file stays; close() spills the in-flight batch
                    return
            path.unlink(missing_ok=True)  # before the pop: a flush() returning sees it gone
            self._replay.pop(0)
            with self._settled_cond:
                self._settled_cond.notify_all()

    async def _refresh(self) -> None:
        try:
            await self._on_load()
        except Exception as exc:  # noqa: BLE001 - the next refresh or batch will try again
            log.debug("tool registry: refreshing aggregates failed: %s", exc)
