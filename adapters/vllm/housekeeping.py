"""Work the plug-in must do when vLLM does not call it: an idle engine never schedules, so its
pins would never expire, and writing statistics inside the scheduler's loop costs every step.

A daemon thread wakes every ``interval`` seconds.  It takes the plug-in's lock without waiting
(the engine thread holds it inside every scheduler call, so a busy engine is never blocked and
expires pins itself), then releases expired pins and, every ``stats_interval`` seconds, writes the
statistics file.  vLLM's block pool is only ever touched under that lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("lamps.vllm")


class Housekeeper:
    def __init__(
        self,
        *,
        lock: threading.RLock,
        expire: Callable[[], None],
        write_stats: Callable[[], None] | None,
        interval: float = 0.5,
        stats_interval: float = 2.0,
    ) -> None:
        if not interval > 0 or not stats_interval > 0:
            raise ValueError("housekeeping intervals must be > 0")
        self._lock = lock
        self._expire = expire
        self._write_stats = write_stats
        self._interval = interval
        self._stats_every = max(round(stats_interval / interval), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lamps-housekeeping", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self._interval):
            ticks += 1
            if not self._lock.acquire(blocking=False):
                continue  # the engine is inside a scheduler call: it does this itself
            try:
                self._expire()
                if self._write_stats is not None and ticks % self._stats_every == 0:
                    self._write_stats()
            except Exception:
                self.errors += 1
                if self.errors <= 5:
                    log.exception("lamps: housekeeping failed")
            finally:
                self._lock.release()
