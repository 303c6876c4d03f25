"""Conformance harness for vLLM's own tests/v1/core/test_scheduler.py (not part of vLLM).

CONFORMANCE_TARGET=stock   -> vLLM's Scheduler / AsyncScheduler, untouched.
CONFORMANCE_TARGET=plugin  -> every scheduler the file builds is the lamps plug-in:
    tests/v1/core/utils.py  create_scheduler()        builds LampsScheduler / LampsAsyncScheduler
    test_scheduler.py       create_scheduler_with_priority(), _create_encoder_decoder_scheduler()
                            (which call ``Scheduler(...)`` directly) build LampsScheduler
    The policy comes from LAMPS_POLICY (adapters/vllm/config.py reads it).
    The plug-in is imported from PYTHONPATH (run.sh puts a snapshot of the checkout there).

Per test the harness records whether a scheduler was built and of which class, and writes
{nodeid: {outcome, error, built}} as JSON to CONFORMANCE_OUT at the end of the session.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

TARGET = os.environ.get("CONFORMANCE_TARGET", "stock")
OUT = os.environ.get("CONFORMANCE_OUT")

_built: list[str] = []
_results: dict[str, dict] = {}


def _install_build_tracker() -> None:
    """Record every vLLM scheduler constructed (any subclass), by class name."""
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler.__init__

    def __init__(self, *args, **kwargs):
        _built.append(type(self).__name__)
        return original(self, *args, **kwargs)

    Scheduler.__init__ = __init__


def _install_plugin() -> None:
    import tests.v1.core.test_scheduler as t
    import tests.v1.core.utils as u

    from adapters.vllm.scheduler import LampsAsyncScheduler, LampsScheduler

    # create_scheduler(): `scheduler_cls = AsyncScheduler if async_scheduling else Scheduler`
    u.Scheduler = LampsScheduler
    u.AsyncScheduler = LampsAsyncScheduler
    # helpers in the test module that call `Scheduler(...)` themselves
    t.Scheduler = LampsScheduler


_install_build_tracker()


def pytest_collection_finish(session):
    if TARGET == "plugin":
        _install_plugin()
        import adapters.vllm.scheduler as s

        sys.stderr.write(
            f"[conformance] plug-in from {os.path.dirname(os.path.dirname(os.path.dirname(s.__file__)))}, "
            f"LAMPS_POLICY={os.environ.get('LAMPS_POLICY')}\n"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _built.clear()
    yield
    rec = _results.setdefault(item.nodeid, {})
    rec["built"] = sorted(set(_built))


def _first_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def pytest_runtest_logreport(report):
    rec = _results.setdefault(report.nodeid, {"outcome": "passed", "error": ""})
    rec.setdefault("outcome", "passed")
    rec.setdefault("error", "")
    if report.failed and rec["outcome"] != "failed":
        rec["outcome"] = "failed" if report.when == "call" else f"error({report.when})"
        rec["error"] = _first_line(report)
    elif report.skipped and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        rec["error"] = _first_line(report)


def pytest_sessionfinish(session, exitstatus):
    if OUT:
        with open(OUT, "w") as fh:
            json.dump(_results, fh, indent=1, sort_keys=True)
