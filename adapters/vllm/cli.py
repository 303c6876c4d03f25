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


def run_engine_bench(args: argparse.Namespace, config: Any, console: Any) -> list[Any]:
    """``bench --engine URL`` replays against a running server; ``--engine compare`` starts one
    server per ``--engine-policies`` entry in turn, same settings, and replays the same workload."""
    from adapters.vllm.replay import ReplayOptions, replay, summarize
    from adapters.vllm.server import ManagedServer, scrape_metrics
    from lamps_agent.workloads.arrivals import poisson_workload

    summaries = []
    for qps in config.qps:
        arrivals = poisson_workload(
            config.programs,
            qps=qps,
            seed=config.seed,
            num_programs=config.num_programs,
            duration=config.duration,
        )
        if args.engine == "compare":
            if not args.model:
                raise ValueError("--engine compare needs --model")
            policies = [p.strip() for p in args.engine_policies.split(",") if p.strip()]
            for policy in policies:
                stats = Path(tempfile.gettempdir()) / f"lamps-stats-{os.getpid()}-{policy}.json"
                opts = _serve_options(
                    args, policy=policy, swap=args.swap and policy != "stock", stats_file=str(stats),
                    vllm_args=tuple(args.vllm_arg or ()), async_scheduler=None, host="127.0.0.1",
                    tools=False,  # the replay sends token prompts, no tools
                )  # fmt: skip
                log = Path(args.out) / f"server-{policy}.log"
                Path(args.out).mkdir(parents=True, exist_ok=True)
                console.print(f"starting vLLM ({policy}) …")
                with ManagedServer(opts, log_path=log) as server:
                    summaries.append(_replay_once(args, config, arrivals, qps, policy, server.url, replay,
                                                  ReplayOptions, summarize, scrape_metrics))  # fmt: skip
        else:
            summaries.append(_replay_once(args, config, arrivals, qps, args.engine_label, args.engine,
                                          replay, ReplayOptions, summarize, scrape_metrics))  # fmt: skip
    return summaries


def _replay_once(
    args, config, arrivals, qps, label, url, replay, ReplayOptions, summarize, scrape_metrics
):  # type: ignore[no-untyped-def]
    model = args.model or _served_model(url)
    opts = ReplayOptions(
        url=url.rstrip("/"),
        model=model,
        time_scale=args.time_scale,
        send_hints=not args.no_hints,
        vocab_high=args.vocab_high,
        preset=config.preset.name,
        seed=config.seed,
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
        seed=config.seed,
        prefill_computed=int(prompt - cached),
        time_scale=args.time_scale,
    )


def _served_model(url: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=10) as resp:
        data = json.loads(resp.read())
    return str(data["data"][0]["id"])
