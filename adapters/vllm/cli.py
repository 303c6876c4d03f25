"""``lamps-agent serve`` and the engine side of ``lamps-agent bench --engine``.

Module-level imports are stdlib only: vLLM and aiohttp load inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from lamps_agent.policies import POLICIES


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="start vLLM's OpenAI-compatible server with the lamps scheduler",
        description="Start vLLM's OpenAI-compatible server with the lamps scheduler plug-in, "
        "set up for tool-calling agents (the tool-call parser for the model's family, "
        "--enable-auto-tool-choice, structured outputs without free whitespace). Arguments "
        "after '--' go to vLLM unchanged and win over these choices.",
    )
    p.add_argument("--model", required=True, help="model folder (or name vLLM can load offline)")
    p.add_argument("--policy", default="lamps", choices=[*POLICIES.names(), "stock"],
                   help="a core policy; stock = vLLM's own scheduler, no plug-in (default: lamps)")  # fmt: skip
    p.add_argument("--preset", default="h100-llama3-8b", help="cost constants for waste / area")
    p.add_argument("--swap", action="store_true", help="enable the host-memory swap connector")
    p.add_argument("--host-swap-gb", type=float, default=4.0)
    p.add_argument("--async-scheduler", action=argparse.BooleanOptionalAction, default=None,
                   help="LampsAsyncScheduler, for vLLM's async scheduling (default: on where a GPU is present)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--no-tools",
        dest="tools",
        action="store_false",
        default=argparse.SUPPRESS,  # absent: tools on (and no misleading "default: True")
        help="serve without tool calling (no parser; for models that cannot call tools)",
    )
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="options passed to vLLM")
    p.set_defaults(handler=run_serve)


def _serve_options(args: argparse.Namespace, **overrides: Any) -> Any:
    from adapters.vllm.server import ServeOptions

    vllm_args = [a for a in (getattr(args, "vllm_args", None) or []) if a != "--"]
    values = {
        "model": args.model,
        "policy": getattr(args, "policy", "lamps"),
        "preset": args.preset,
        "swap": args.swap,
        "host_swap_gb": getattr(args, "host_swap_gb", 4.0),
        "async_scheduler": getattr(args, "async_scheduler", None),
        "host": getattr(args, "host", "127.0.0.1"),
        "port": args.port,
        "reserved_cpus": getattr(args, "reserved_cpus", None),
        "tools": getattr(args, "tools", True),
        "vllm_args": tuple(vllm_args),
    }
    values.update(overrides)
    return ServeOptions(**values)


def run_serve(args: argparse.Namespace) -> int:
    from adapters.vllm.server import server_command, server_env, tool_setup

    opts = _serve_options(args)
    tools = tool_setup(opts)  # a missing folder or a model without tools: one line, no vLLM
    if tools is not None:
        parser = tools.parser or "yours"
        print(f"tool calls: parser {parser} ({tools.why})", file=sys.stderr)
    cmd = server_command(opts, tools)
    print("+", shlex.join(cmd), file=sys.stderr)  # copy-pasteable: the template has quotes
    os.execvpe(cmd[0], cmd, server_env(opts))
    return 0  # not reached


NOOP = "noop"
"""The standing control of a comparison: the plug-in loaded with stock vLLM's order (the ``vllm``
policy: FCFS, every paused turn discarded, so no pins and nothing swapped)."""


def server_policy(label: str) -> str:
    """The ``--policy`` a comparison label runs: ``noop`` is the plug-in with the ``vllm`` policy."""
    return "vllm" if label == NOOP else label


def compare_labels(text: str) -> list[str]:
    """``--engine-policies`` for a comparison; the no-op control is added after stock (or first)
    when it is missing, so every comparison has it."""
    labels = [p.strip() for p in text.split(",") if p.strip()]
    if NOOP not in labels:
        at = labels.index("stock") + 1 if "stock" in labels else 0
        labels.insert(at, NOOP)
    return labels


def run_engine_bench(args: argparse.Namespace, config: Any, console: Any) -> list[Any]:
    """``bench --engine URL`` replays against a running server, ``--rounds`` times.

    ``--engine compare`` starts one server per ``--engine-policies`` entry (the no-op control
    always among them), all with the same settings: the same vLLM arguments, the same
    ``VLLM_CPU_NUM_OF_RESERVED_CPU`` and the same KV connector (stock included); it checks from
    their start-up logs that their CPU layout and engine config are identical, then replays the
    same workload on each in turn, round after round (A B C D A B C D …).  Each round draws new
    token ids and session ids, so no round finds another's prefixes cached."""
    from contextlib import ExitStack

    from adapters.vllm.replay import ReplayOptions, replay, summarize
    from adapters.vllm.server import ManagedServer, scrape_metrics
    from lamps_agent.workloads.arrivals import poisson_workload

    summaries = []
    with ExitStack() as stack:
        if args.engine == "compare":
            if not args.model:
                raise ValueError("--engine compare needs --model")
            servers = _start_servers(args, stack, ManagedServer, console)
        else:
            servers = {args.engine_label: args.engine}
        for qps in config.qps:
            arrivals = poisson_workload(
                config.programs,
                qps=qps,
                seed=config.seed,
                num_programs=config.num_programs,
                duration=config.duration,
            )
            for rnd in range(args.rounds):
                for label, url in servers.items():
                    console.print(f"round {rnd + 1}/{args.rounds}: {label} at qps {qps:g} …")
                    summaries.append(
                        _replay_once(args, config, arrivals, qps, label, url, rnd, replay,
                                     ReplayOptions, summarize, scrape_metrics)
                    )  # fmt: skip
    return summaries


def _start_servers(
    args: argparse.Namespace, stack: Any, managed_server: Any, console: Any
) -> dict[str, str]:
    """Start every server of a comparison (one port each), print their layout, and refuse a
    comparison whose servers are not laid out alike."""
    from adapters.vllm.server import server_layout

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    servers: dict[str, str] = {}
    layouts = {}
    for i, label in enumerate(compare_labels(args.engine_policies)):
        stats = Path(tempfile.gettempdir()) / f"lamps-stats-{os.getpid()}-{label}.json"
        opts = _serve_options(
            args, policy=server_policy(label), swap=args.swap, stats_file=str(stats),
            vllm_args=tuple(args.vllm_arg or ()), async_scheduler=None, host="127.0.0.1",
            port=args.port + i, reserved_cpus=args.reserved_cpus,
            tools=False,  # the replay sends token prompts, no tools
        )  # fmt: skip
        log = out / f"server-{label}.log"
        console.print(f"starting vLLM ({label}) on port {opts.port} …")
        server = stack.enter_context(managed_server(opts, log_path=log))
        servers[label] = server.url
        layouts[label] = server_layout(log.read_text(errors="replace"))
    reserved = "unset" if args.reserved_cpus is None else str(args.reserved_cpus)
    console.print(f"layout (VLLM_CPU_NUM_OF_RESERVED_CPU={reserved} for every server):")
    for label, layout in layouts.items():
        console.print(f"  {label}: {layout.text()}")
    first = next(iter(layouts.values()))
    odd = [label for label, layout in layouts.items() if not layout.same_as(first)]
    if odd:
        raise ValueError(
            f"the servers are not laid out alike ({', '.join(odd)} differ; see {out}/server-*.log)"
            ": set --reserved-cpus, and the same --vllm-arg for all"
        )
    (out / "layout.txt").write_text(
        f"VLLM_CPU_NUM_OF_RESERVED_CPU={reserved}\n"
        + "".join(f"{label}: {layout.text()}\n" for label, layout in layouts.items())
        + f"engine config (all servers): {first.engine_config}\n"
    )
    return servers


def _replay_once(
    args, config, arrivals, qps, label, url, rnd, replay, ReplayOptions, summarize, scrape_metrics
):  # type: ignore[no-untyped-def]
    model = args.model or _served_model(url)
    opts = ReplayOptions(
        url=url.rstrip("/"),
        model=model,
        time_scale=args.time_scale,
        send_hints=not args.no_hints,
        vocab_high=args.vocab_high,
        preset=config.preset.name,
        seed=config.seed * 1000 + rnd,
        session_prefix=f"r{rnd}-",
    )
    before = scrape_metrics(opts.url)
    results = asyncio.run(replay(arrivals, opts))
    after = scrape_metrics(opts.url)
    prompt = after.get("vllm:prompt_tokens_total", 0) - before.get("vllm:prompt_tokens_total", 0)
    cached = after.get("vllm:prompt_tokens_cached_total", 0) - before.get(
        "vllm:prompt_tokens_cached_total", 0
    )
    return summarize(
        results,
        policy=label,
        trace=config.trace_name,
        qps=qps,
        seed=rnd,
        prefill_computed=int(prompt - cached),
        time_scale=args.time_scale,
    )


def _served_model(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=10) as resp:
        data = json.loads(resp.read())
    return str(data["data"][0]["id"])
