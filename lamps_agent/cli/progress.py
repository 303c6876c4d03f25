"""Progress of a benchmark's runs, visible however the command is run: a live one-line bar on a
terminal, and otherwise (a pipe, a log file, CI) one line per finished run, flushed as it comes,
so a long ``lamps-agent bench | tee log`` shows where it is."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    """``with RunProgress(total) as progress: ... progress.finished(what, outcome)``; on stderr
    unless given ``stream``; nothing with ``quiet``.  ``terminal`` overrides the detection of a
    terminal (rich's: a TTY, or ``FORCE_COLOR`` / ``TTY_COMPATIBLE`` set)."""

    def __init__(
        self,
        total: int,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.total = total
        self.num_done = 0
        self._quiet = quiet
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.perf_counter()
        console = Console(file=self._stream, force_terminal=terminal)
        self._bar: Progress | None = None
        if console.is_terminal and not quiet:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._task = self._bar.add_task("simulating", total=total)

    def __enter__(self) -> RunProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def finished(self, what: str, outcome: str) -> None:
        """One more run done: ``what`` ran (``lamps oracle qps=2 seed=0``), with ``outcome``."""
        self.num_done += 1
        if self._quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=what)
            return
        elapsed = time.perf_counter() - self._started
        print(
            f"[{self.num_done}/{self.total}] {what}: {outcome} ({elapsed:.0f} s)",
            file=self._stream,
            flush=True,
        )
