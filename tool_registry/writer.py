"""The background writer: a bounded buffer filled by ``record()`` and drained in batches by a thread
that owns its own asyncio loop and the async engine.

``submit`` (the caller's side; ``record()`` or ``record_turn()`` has validated the item) takes a
lock and appends it: a call as a plain tuple, a model turn as a ``PendingTurn`` named tuple; it
wakes the writer when a batch is full.  Calls and turns share the buffer, the batches, the retries
and the spill file.  The writer writes when ``batch_size`` records are waiting or
``flush_interval`` seconds have passed, up to ``MAX_BATCHES_PER_WRITE`` batches in one transaction
when a backlog has built up.

A failed batch stays "in flight".  When the database is unreachable (a connection error, a
timeout, a server shutting down) it is retried with exponential back-off (``BACKOFF_BASE_S``
doubling up to ``BACKOFF_MAX_S``) until it commits; the same record ids are sent each time, so a
batch whose commit was acknowledged late adds nothing twice.  When the database answers but
rejects the batch's data (SQLSTATE class 22/23, an encoding error), the batch is split in halves
until the bad row is alone: that row goes to the dead-letter file (counted, logged once) and every
other row lands.

When the buffer holds ``max_buffer`` records, further records go to the spill file
(:mod:`tool_registry.spill`) and are replayed, a batch at a time, once the buffer has drained.
If even the spill file cannot be written (a full disk), the record is counted in ``num_lost`` and
logged; ``submit`` never raises ``OSError``.

What a process can lose: on ``close()`` (and at exit, and on SIGTERM / SIGINT through
:mod:`tool_registry.signals`) whatever is not written within the timeout goes to the spill file.
Only SIGKILL (or a power cut) loses records: at most the buffer (``max_buffer``) plus the batch
in flight (``batch_size * MAX_BATCHES_PER_WRITE``); spilled lines are already on disk.
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
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from tool_registry import signals, spill
from tool_registry.aggregate import Aggregate
from tool_registry.errors import RegistryClosedError, RegistryUnavailableError
from tool_registry.ids import new_id, new_ids
from tool_registry.store import Store
from tool_registry.types import PendingCall, PendingTurn, Row, with_id

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
REFRESH_INTERVAL_S = 5.0  # how often aggregates written by other processes are reloaded
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 3.0  # close(): waiting for the writer thread, once its records are spilled
MAX_BATCHES_PER_WRITE = 16  # with a backlog, one transaction takes up to 16 batches
PING_TIMEOUT_S = 5.0


_LIVE_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The writer thread does not survive a fork: the child's copy must not buffer into the void
    # (nor hang at exit waiting for it).  The parent's registry is unaffected.
    for writer in list(_LIVE_WRITERS):
        writer.disown()


os.register_at_fork(after_in_child=_after_fork_in_child)


def checkpoint_all(timeout: float) -> None:
    """Flush every live registry of this process, spilling what does not make it in time (the
    signal handler's job)."""
    for writer in list(_LIVE_WRITERS):
        writer.checkpoint(timeout)


def close_all(timeout: float) -> None:
    """Close every live registry of this process (flush, then spill what is left)."""
    for writer in list(_LIVE_WRITERS):
        writer.close(timeout)


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the rows are bad (not that the database is unreachable): SQLSTATE
    class 22 (data exception, e.g. a NUL in text) or 23 (integrity), or a value the driver could
    not encode (a lone surrogate)."""
    for cause in _causes(exc):
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return False
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and state[:2] in ("22", "23"):
            return True
        if isinstance(cause, (UnicodeError, OverflowError)):
            return True
        if type(cause).__name__ in ("IntegrityError", "DataError"):
            return True
    return False


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
        handle_signals: bool = True,
    ) -> None:
        """``on_load`` reloads hints and aggregates: at start and every ``REFRESH_INTERVAL_S``;
        ``on_aggregates`` receives the fresh aggregates of the tools of each written batch."""
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._on_aggregates = on_aggregates
        self._on_load = on_load
        # Re-entrant: a signal handler running on the main thread may interrupt submit().
        self._lock = threading.RLock()
        self._settled_cond = threading.Condition()
        self._buffer: deque[PendingCall | PendingTurn] = deque()
        self._inflight: list[Row] = []
        self._spill = spill.SpillFile(spill_dir, store.url)
        self._quarantine = spill.SideFile(
            spill_dir, self._spill.key, spill.QUARANTINE_SUFFIX, "a corrupt spill line quarantined"
        )
        self._dead_letter = spill.SideFile(
            spill_dir, self._spill.key, spill.DEAD_LETTER_SUFFIX, "the database rejected a record"
        )
        self._replay: list[spill.Claim] = []  # spill files to replay, locked, with line counts
        self._replay_left = 0  # records in those files not yet handed to _write
        self.closed = False
        self._closed_reason = "that is closed"
        self.num_accepted = 0  # records accepted by submit (buffered or spilled)
        self.num_settled = 0  # records known to be in the database, dead-lettered or quarantined
        self.num_inserted = 0  # rows this writer inserted (duplicates on retry excluded)
        self.num_spilled = 0  # records that went through the spill file
        self.num_lost = 0  # records the spill file could not take (a full disk)
        self.num_dead_lettered = 0
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
        except TimeoutError:
            self._stop_loop()
            self._spill.close()
            raise RegistryUnavailableError(
                f"the tool registry database at {store.masked_url} did not answer within "
                f"{STARTUP_TIMEOUT_S:g} s"
            ) from None
        except BaseException:
            self._stop_loop()
            self._spill.close()
            raise
        atexit.register(self.close)
        _LIVE_WRITERS.add(self)
        if handle_signals:
            signals.install(checkpoint_all, close_all)

    @property
    def num_quarantined(self) -> int:
        return self._quarantine.count

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
            if len(self._buffer) >= self.max_buffer:
                self._spill_one(with_id(new_id(), item))
                return
            self.num_accepted += 1
            self._buffer.append(item)
            full = len(self._buffer) == self.batch_size
        if full:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _spill_one(self, row: Row) -> None:
        """Append ``row`` to the spill file (caller holds the lock); on a disk error it is counted
        as lost and logged (the first, then every 10,000th), never raised."""
        try:
            self._spill.write((row,))
        except OSError as exc:
            self.num_lost += 1
            if self.num_lost % 10_000 == 1:
                log.error(
                    "tool registry: cannot write the spill file %s (%s): %d records lost so far",
                    self._spill.path,
                    exc,
                    self.num_lost,
                )
            return
        self.num_accepted += 1
        self.num_spilled += 1

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
        self._wake_writer()
        with self._settled_cond:
            while self.num_settled < target or self._spill.num_lines or self._replay:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"tool registry flush timed out with {self.pending} records pending "
                        f"(last error: {self._last_error_text()})"
                    )
                self._settled_cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def _last_error_text(self) -> str:
        if self.last_error is None:
            return "none"
        return self.store.describe_error(self.last_error)

    def _wake_writer(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._wake.set)

    def checkpoint(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, then move what is still in memory to the spill
        file; the registry stays open.  Run by the SIGTERM / SIGINT handler."""
        if self.closed:
            return
        try:
            self.flush(timeout)
            return
        except TimeoutError:
            pass
        with self._lock:
            self._spill_leftover(closing=False)

    def _spill_leftover(self, *, closing: bool) -> None:
        """Spill the buffer and a copy of the batch in flight (caller holds the lock).  The copy
        may also commit: its ids make the replay add nothing twice."""
        buffered = list(self._buffer)
        self._buffer.clear()
        inflight = list(self._inflight)
        rows = inflight + [
            with_id(row_id, item)
            for row_id, item in zip(new_ids(len(buffered)), buffered, strict=True)
        ]
        try:
            self._spill.write(rows)
        except OSError as exc:
            # still in flight when not closing: the writer keeps retrying those
            self.num_lost += len(buffered) + (len(inflight) if closing else 0)
            log.error(
                "tool registry: cannot write the spill file %s (%s): %d records lost so far",
                self._spill.path,
                exc,
                self.num_lost,
            )
            with self._settled_cond:  # they will never settle: flush() must not wait for them
                self.num_settled += len(buffered)
            return
        self.num_spilled += len(rows)
        if not closing:
            # the copies settle once more when replayed: keep flush()'s arithmetic exact
            self.num_accepted += len(inflight)

    def disown(self) -> None:
        """In a forked child: refuse further records; the parent still owns the buffer."""
        self.closed = True
        self._closed_reason = "in a process forked after it was created; open a new ToolRegistry"
        self._buffer = deque()
        self._lock = threading.RLock()  # another thread may have held it at the fork
        atexit.unregister(self.close)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer and release the engine.  Records that cannot be written within
        ``timeout`` seconds go to the spill file first, to be replayed by the next registry; a
        hung database delays this by ``timeout`` plus at most ``STOP_TIMEOUT_S``, never raises."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        atexit.unregister(self.close)
        _LIVE_WRITERS.discard(self)
        with contextlib.suppress(TimeoutError):
            self.flush(timeout)
        self._abort = True
        self._wake_writer()
        with self._lock:
            self._spill_leftover(closing=True)
            self._inflight = []
        self._stop_loop()
        for claim in self._replay:
            claim.release(done=False)  # unlocked: the next registry replays the rest
        if self.pending:
            log.warning(
                "tool registry closed with %d records not written to %s; they are kept in %s "
                "and will be replayed by the next registry on this database",
                self.pending,
                self.store.masked_url,
                self._spill.directory,
            )
        if self.num_lost:
            log.error(
                "tool registry closed having lost %d records: the spill directory %s was not "
                "writable (full disk?)",
                self.num_lost,
                self._spill.directory,
            )
        self._spill.close()

    # writer side

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def _stop_loop(self) -> None:
        """Stop the writer task and thread within ``STOP_TIMEOUT_S``; a write stuck on a hung
        database is abandoned (its rows were spilled by the caller)."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._main_task is not None:
                self._main_task.cancel()
                await asyncio.wait([self._main_task], timeout=STOP_TIMEOUT_S / 3)
            await asyncio.wait_for(self.store.dispose(), STOP_TIMEOUT_S / 3)

        try:
            self.call(stop(), timeout=STOP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a hung database must not stop the shutdown
            log.debug("tool registry: stopping the writer: %s", self.store.describe_error(exc))
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=STOP_TIMEOUT_S)

    async def _start(self) -> None:
        await self.store.open()
        await self._on_load()
        for claim in self._spill.claim_orphans():
            self._add_replay(claim)
            with self._lock:
                self.num_accepted += claim.count  # so a flush() also waits for them
        self._main_task = asyncio.get_running_loop().create_task(self._main())
        self._main_task.add_done_callback(self._log_crash)

    def _log_crash(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "tool registry writer stopped: %s; records stay pending",
                self.store.describe_error(task.exception() or RuntimeError()),
            )

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
            try:
                await self._step()
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk during a hand-over
                self.last_error = exc
                log.error("tool registry writer: %s", self.store.describe_error(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_abort(), BACKOFF_MAX_S)
            if time.monotonic() - last_refresh > REFRESH_INTERVAL_S:  # even under steady load
                last_refresh = time.monotonic()
                await self._refresh()

    async def _step(self) -> None:
        batch = self._take_batch()
        if batch:
            await self._write(batch)
        elif self._replay or self._spill.num_lines:
            await self._replay_spill()

    def _take_batch(self) -> list[Row]:
        with self._lock:
            if self._inflight:
                return self._inflight
            count = min(len(self._buffer), self.batch_size * MAX_BATCHES_PER_WRITE)
            pending = [self._buffer.popleft() for _ in range(count)]
            # ids are given once, here: a retry sends the very same rows.  Under the lock, so
            # close() sees every record either in the buffer or in flight.
            self._inflight = [
                (row_id, *item) if type(item) is tuple else with_id(row_id, item)
                for row_id, item in zip(new_ids(count), pending, strict=True)
            ]
            return self._inflight

    async def _write(self, batch: list[Row], *, may_exist: bool = False) -> bool:
        """Write ``batch`` (already in flight), split around rows the database rejects; returns
        ``False`` only when the writer aborts (the rows not written stay in flight)."""
        parts = deque([batch])
        while parts:
            part = parts.popleft()
            outcome = await self._write_part(part, may_exist=may_exist)
            if outcome is None:
                return False
            if outcome is False:  # the database rejected this part's data: split it
                may_exist = True  # a split part may be retried after an unseen commit
                if len(part) == 1:
                    self._reject(part[0])
                else:
                    half = len(part) // 2
                    parts.extendleft((part[half:], part[:half]))
            self._inflight = [row for rest in parts for row in rest]
        return True

    async def _write_part(self, rows: list[Row], *, may_exist: bool) -> bool | None:
        """Write ``rows`` in one transaction, retrying while the database is unreachable:
        ``True`` once written, ``False`` when the database rejects the data, ``None`` on abort."""
        attempt = 0
        while True:
            try:
                retry = may_exist or attempt > 0  # an earlier try may have committed unseen
                inserted, aggregates = await self.store.write_batch(rows, may_exist=retry)
            except Exception as exc:  # noqa: BLE001 - classified just below
                self._note_failure(exc, len(rows), attempt)
                if self._abort:
                    return None
                if is_data_error(exc) and await self._database_answers():
                    return False
                delay = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_abort(), delay)
                continue
            self._on_aggregates(aggregates)
            with self._settled_cond:
                self.num_inserted += inserted
                self.num_settled += len(rows)
                self._settled_cond.notify_all()
            return True

    def _note_failure(self, exc: BaseException, size: int, attempt: int) -> None:
        self.num_failures += 1
        self.last_error = exc
        if attempt == 0 or attempt % 10 == 0:
            # the first line only, URL secrets masked: SQLAlchemy's text goes on with the SQL
            log.warning(
                "tool registry: writing %d records to %s failed (try %d, %d pending): %s",
                size,
                self.store.masked_url,
                attempt + 1,
                self.pending,
                self.store.describe_error(exc),
            )

    async def _database_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.store.ping(), PING_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - unreachable: the failure was not the data's fault
            return False
        return True

    def _reject(self, row: Row) -> None:
        """A row the database refuses on its own: to the dead-letter file, settled."""
        reason = self.store.describe_error(self.last_error or RuntimeError("rejected"))
        try:
            self._dead_letter.add(spill.encode(row).encode("ascii"), reason)
        except OSError as exc:
            self.num_lost += 1
            log.error("tool registry: cannot write the dead-letter file: %s", exc)
        self.num_dead_lettered += 1
        with self._settled_cond:
            self.num_settled += 1
            self._settled_cond.notify_all()

    async def _wait_abort(self) -> None:
        while not self._abort:
            await asyncio.sleep(0.02)

    def _add_replay(self, claim: spill.Claim) -> None:
        self._replay.append(claim)
        self._replay_left += claim.count

    async def _replay_spill(self) -> None:
        """Write the spill files back a batch at a time, streaming each file (memory bounded by
        one batch); a file is deleted once all of it is in."""
        with self._lock:
            taken = self._spill.take()
        if taken is not None:
            self._add_replay(taken)
        while self._replay:
            claim = self._replay[0]
            done = 0
            for batch in spill.read_batches(claim.path, self.batch_size, self._quarantine):
                self._inflight = batch
                self._replay_left -= len(batch)
                done += len(batch)
                if not await self._write(batch, may_exist=True):
                    return  # aborted: the file stays for the next registry
            skipped = claim.count - done  # quarantined lines: accounted for, and logged
            self._replay_left -= skipped
            claim.release(done=True)  # before the pop: a flush() returning sees it gone
            self._replay.pop(0)
            with self._settled_cond:
                self.num_settled += skipped
                self._settled_cond.notify_all()

    async def _refresh(self) -> None:
        try:
            await self._on_load()
        except Exception as exc:  # noqa: BLE001 - the next refresh or batch will try again
            log.debug("tool registry: refreshing aggregates failed: %s", exc)
