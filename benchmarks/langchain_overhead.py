"""How much time LampsMiddleware adds to each model call and each tool call of an agent.

    python benchmarks/langchain_overhead.py [--runs 300] [--registry sqlite|memory] [--json out.json]
    python benchmarks/langchain_overhead.py --summarize run1.json run2.json ...

The same ``create_agent`` agent (an offline fake chat model; per run 5 model calls and 8 tool
calls, two tool calls in parallel per turn; a 2,000-character prompt) runs in three
configurations, interleaved: without the middleware, with a pass-through ("empty") middleware, and
with LampsMiddleware.  In each, two probe middlewares sit around the middleware's slot: the outer
probe times each call from entry to exit, the inner one the part spent further in (the model or
the tool itself).  Their difference is what the slot costs per call; minus the empty slot's cost
("without") it is the time the middleware adds.  Also reported: the middleware's own code per
call (planning, hints, recording), and the median end-to-end time of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field

from adapters.langchain import LampsMiddleware
from lamps_agent.predictors.base import DurationEstimate

ROUNDS = 4  # tool-calling turns per run, then a final answer
PARALLEL = 2  # tool calls per turn
CALLS = {"model": ROUNDS + 1, "tool": ROUNDS * PARALLEL}
PROMPT = "Plan a trip. " * 150  # ~2,000 characters
CONFIGS = ("without", "empty", "lamps")


class FakeModel(GenericFakeChatModel):
    messages: Any = Field(default_factory=lambda: iter(()))
    extra_body: dict[str, Any] | None = None  # so hints are sent, as to ChatOpenAI

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(**kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        turn = sum(1 for m in messages if isinstance(m, AIMessage))
        if turn < ROUNDS:
            calls = [
                {"name": "lookup", "args": {"key": f"k{turn}-{i}"}, "id": f"c{turn}-{i}"}
                for i in range(PARALLEL)
            ]
            reply = AIMessage(content="Looking things up.", tool_calls=calls)
        else:
            reply = AIMessage(content="Done: " + ", ".join(str(m.content) for m in messages[-2:]))
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


class Probe(AgentMiddleware[Any, Any, Any]):
    """Times each model call (in order) and each tool call (by run and call id) through it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self.model: list[float] = []
        self.tool: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        start = time.perf_counter()
        try:
            return handler(request)
        finally:
            self.model.append(time.perf_counter() - start)

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self.model.append(time.perf_counter() - start)

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        start = time.perf_counter()
        try:
            return handler(request)
        finally:
            self._tool_done(request, time.perf_counter() - start)

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        start = time.perf_counter()
        try:
            return await handler(request)
        finally:
            self._tool_done(request, time.perf_counter() - start)

    def _tool_done(self, request: Any, elapsed: float) -> None:
        key = (request.runtime.config["configurable"]["thread_id"], request.tool_call["id"])
        with self._lock:
            self.tool[key] = elapsed

    def clear(self) -> None:
        self.model.clear()
        self.tool.clear()


class Empty(AgentMiddleware[Any, Any, Any]):
    """A pass-through middleware: what any extra middleware layer costs in create_agent."""

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return handler(request)

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        return await handler(request)

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return handler(request)

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return await handler(request)


class TimedLamps(LampsMiddleware):
    """LampsMiddleware that also times its own code per call (planning, hints, recording)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.own_model: list[float] = []
        self.own_tool: list[float] = []
        self._before: dict[int, float] = {}
        self._lock = threading.Lock()
        finish = self.planner.finish

        def timed_finish(*args: Any) -> None:
            start = time.perf_counter()
            finish(*args)
            self.own_model[-1] += time.perf_counter() - start

        self.planner.finish = timed_finish  # type: ignore[method-assign]

    def _before_model(self, request: Any) -> Any:
        start = time.perf_counter()
        try:
            return super()._before_model(request)
        finally:
            self.own_model.append(time.perf_counter() - start)

    def _before_tool(self, request: Any) -> Any:
        start = time.perf_counter()
        call = super()._before_tool(request)
        with self._lock:
            self._before[id(call)] = time.perf_counter() - start
        return call

    def _after_tool(self, call: Any, result: Any, exc: Any) -> None:
        start = time.perf_counter()
        super()._after_tool(call, result, exc)
        elapsed = time.perf_counter() - start
        with self._lock:
            self.own_tool.append(self._before.pop(id(call)) + elapsed)

    def clear(self) -> None:
        self.own_model.clear()
        self.own_tool.clear()


class MemoryRegistry:
    """A registry that only counts: isolates the middleware from the database writer."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def record(self, tool: str, *, duration: float, **fields: Any) -> None:
        with self._lock:
            self.count += 1

    def estimate(self, tool: str) -> DurationEstimate:
        return DurationEstimate(mean=1.0, p50=1.0, p90=1.0, p99=1.0, count=0, confidence=0.0)


class Setup:
    def __init__(self, config: str, registry: Any) -> None:
        self.outer, self.inner = Probe("outer"), Probe("inner")
        self.lamps = TimedLamps(registry=registry, agent="bench") if config == "lamps" else None
        middle: list[AgentMiddleware[Any, Any, Any]] = []
        if config == "empty":
            middle = [Empty()]
        elif self.lamps is not None:
            middle = [self.lamps]
        self.agent = create_agent(
            FakeModel(), [lookup], middleware=[self.outer, *middle, self.inner]
        )

    def clear(self) -> None:
        for part in (self.outer, self.inner, self.lamps):
            if part is not None:
                part.clear()

    def slot(self, kind: str) -> list[float]:
        """Per call: time inside the outer probe minus time inside the inner one."""
        if kind == "model":
            return [o - i for o, i in zip(self.outer.model, self.inner.model, strict=True)]
        return [self.outer.tool[key] - self.inner.tool[key] for key in self.outer.tool]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_mode(mode: str, runs: int, registry: Any, warmup: int = 20) -> dict[str, Any]:
    setups = {config: Setup(config, registry) for config in CONFIGS}
    per_run: dict[str, list[float]] = {config: [] for config in CONFIGS}
    inputs = {"messages": [HumanMessage(PROMPT)]}
    for i in range(warmup + runs):
        for config in CONFIGS[i % 3 :] + CONFIGS[: i % 3]:  # rotate, so drift hits all alike
            setup = setups[config]
            run_config: Any = {"configurable": {"thread_id": f"{config}-{i}"}}
            start = time.perf_counter()
            if mode == "invoke":
                setup.agent.invoke(inputs, run_config)
            else:
                asyncio.run(setup.agent.ainvoke(inputs, run_config))
            if i < warmup:
                setup.clear()
            else:
                per_run[config].append(time.perf_counter() - start)
    result: dict[str, Any] = {"mode": mode, "runs": runs}
    lamps = setups["lamps"].lamps
    assert lamps is not None
    own = {"model": lamps.own_model, "tool": lamps.own_tool}
    for kind in ("model", "tool"):
        slots = {config: setups[config].slot(kind) for config in CONFIGS}
        base = slots["without"]
        row: dict[str, float] = {"calls": len(slots["lamps"])}
        for config in ("empty", "lamps"):
            for q in (50, 99):
                row[f"{config}_added_p{q}_ms"] = (
                    percentile(slots[config], q) - percentile(base, q)
                ) * 1e3
            mean = statistics.fmean(slots[config]) - statistics.fmean(base)
            row[f"{config}_added_mean_ms"] = mean * 1e3
        row["own_p50_ms"] = percentile(own[kind], 50) * 1e3
        row["own_p99_ms"] = percentile(own[kind], 99) * 1e3
        result[kind] = row
    for config in CONFIGS:
        result[f"run_ms_{config}"] = statistics.median(per_run[config]) * 1e3
    added = result["run_ms_lamps"] - result["run_ms_without"]
    result["lamps_added_per_call_ms_end_to_end"] = added / sum(CALLS.values())
    return result


def report(results: list[dict[str, Any]], runs: int, registry: str) -> None:
    print(
        f"Time added per call (ms); {runs} runs x (5 model + 8 tool calls) per mode; "
        f"registry={registry}"
    )
    print("  added = slot with the middleware minus the same slot empty; own = its own code;")
    print("  empty = what a pass-through middleware adds (LangChain's cost of any layer)")
    head = ["added p50", "added p99", "added mean", "own p50", "own p99", "empty p50", "empty p99"]
    print(f"{'mode':<8}{'call':<6}{'calls':>6}" + "".join(f"{h:>11}" for h in head))
    keys = ["lamps_added_p50_ms", "lamps_added_p99_ms", "lamps_added_mean_ms", "own_p50_ms"]
    keys += ["own_p99_ms", "empty_added_p50_ms", "empty_added_p99_ms"]
    for r in results:
        for kind in ("model", "tool"):
            cells = "".join(f"{r[kind][key]:>11.3f}" for key in keys)
            print(f"{r['mode']:<8}{kind:<6}{r[kind]['calls']:>6.0f}{cells}")
        print(
            f"{r['mode']:<8}end-to-end median per run: {r['run_ms_without']:.2f} ms without, "
            f"{r['run_ms_empty']:.2f} ms empty, {r['run_ms_lamps']:.2f} ms with lamps "
            f"({r['lamps_added_per_call_ms_end_to_end']:+.3f} ms per call)"
        )


SUMMARY_KEYS = {
    "added p50": "lamps_added_p50_ms",
    "added p99": "lamps_added_p99_ms",
    "own p50": "own_p50_ms",
    "own p99": "own_p99_ms",
    "empty p99": "empty_added_p99_ms",
}


def summarize(paths: Sequence[Path]) -> None:
    """min / median / max of each cell over repeated runs (their ``--json`` files)."""
    runs = [json.loads(path.read_text()) for path in paths]
    print(f"{len(runs)} runs; each cell: min / median / max (ms)")
    print(f"{'mode':<8}{'call':<6}" + "".join(f"{h:>22}" for h in SUMMARY_KEYS))
    for i, first in enumerate(runs[0]):
        for kind in ("model", "tool"):
            cells = []
            for key in SUMMARY_KEYS.values():
                values = [run[i][kind][key] for run in runs]
                low, mid, high = min(values), statistics.median(values), max(values)
                cells.append(f"{low:.3f} / {mid:.3f} / {high:.3f}")
            print(f"{first['mode']:<8}{kind:<6}" + "".join(f"{c:>22}" for c in cells))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-call overhead of LampsMiddleware.")
    parser.add_argument("--runs", type=int, default=300, help="agent runs per configuration")
    parser.add_argument("--registry", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--summarize", type=Path, nargs="+", metavar="JSON", help="summarize earlier --json runs"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(args.summarize)
        return 0
    with tempfile.TemporaryDirectory(prefix="lamps-bench-") as scratch:
        if args.registry == "sqlite":
            from tool_registry import ToolRegistry

            registry: Any = ToolRegistry(f"sqlite:///{scratch}/registry.db", spill_dir=scratch)
        else:
            registry = MemoryRegistry()
        results = [run_mode(mode, args.runs, registry) for mode in ("invoke", "ainvoke")]
        if hasattr(registry, "close"):
            registry.close()
    report(results, args.runs, args.registry)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
