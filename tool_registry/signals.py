"""Flush-or-spill on SIGTERM and SIGINT, then whatever the application would have done.

``atexit`` does not run when a process dies of SIGTERM, so without this every buffered record
would be lost on ``kill``, ``docker stop`` or a Kubernetes shutdown.  The first registry created on
the main thread installs one handler per signal; it remembers the handler that was there (the
application's own, ``SIG_DFL`` or ``SIG_IGN``) and, after flushing (up to
``SIGNAL_FLUSH_TIMEOUT_S``) and spilling the rest, chains to it: an application handler is called,
``SIG_IGN`` is honoured, and ``SIG_DFL`` is re-raised so the process still dies of the signal
(exit status 128 + signum).  The registries stay open: a process that survives the signal keeps
recording, and replays its spill file itself; before the default action (death) they are closed
instead, so no other thread can buffer a record after the spill.

An application that installs its own handler *after* creating a registry replaces this one; it can
call :func:`install` again afterwards to chain to it.  SIGKILL cannot be handled: see
:mod:`tool_registry.writer` for what it can lose.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
HANDLED = (signal.SIGTERM, signal.SIGINT)
SIGNAL_FLUSH_TIMEOUT_S = 1.0  # then the rest is spilled: a signal asks for a prompt exit

_previous: dict[int, Any] = {}
_checkpoint: Callable[[float], None] | None = None
_close: Callable[[float], None] | None = None


def install(checkpoint: Callable[[float], None], close: Callable[[float], None]) -> bool:
    """Install the handlers (idempotent); returns ``False`` off the main thread, where Python
    does not allow it (the registry then relies on ``close()`` and ``atexit``).

    ``checkpoint(timeout)`` flushes or spills every registry and keeps them open: it runs before
    an application handler, which may let the process live on.  ``close(timeout)`` flushes or
    spills and closes them: it runs before the default action kills the process, so that another
    thread cannot buffer a record between the spill and the death."""
    global _checkpoint, _close
    if threading.current_thread() is not threading.main_thread():
        return False
    _checkpoint, _close = checkpoint, close
    for signum in HANDLED:
        current = signal.getsignal(signum)
        if current is _handle or current is None:
            continue  # ours already, or a handler set outside Python that we could not chain
        _previous[signum] = current
        signal.signal(signum, _handle)
    return True


def _handle(signum: int, frame: FrameType | None) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    action = _close if previous == signal.SIG_DFL else _checkpoint
    try:
        if action is not None:
            action(SIGNAL_FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the application's handler must still run
        log.error("tool registry: flushing on signal %d failed: %s", signum, exc)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN: nothing more to do
