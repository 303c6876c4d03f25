"""``lamps-agent serve`` and the engine side of ``lamps-agent bench --engine``.

Module-level imports are stdlib only: vLLM and aiohttp load inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.vllm.config import STOCK, server_policies
from lamps_agent.cli import options as cli_options
from lamps_agent.presets import ENGINE_FILE


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
    _add_engine_options(
        p,
        policy_help="a core policy; stock = vLLM's own scheduler, no plug-in (default: lamps)",
        async_help="LampsAsyncScheduler, for vLLM's async scheduling (default: on where a GPU "
        "is present)",
    )
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
    _register_cluster(sub)


def _add_engine_options(p: argparse.ArgumentParser, *, policy_help: str, async_help: str) -> None:
    """The engine's options, the same for one server (serve) and for every replica (cluster)."""
    p.add_argument("--policy", default="lamps", choices=server_policies(), help=policy_help)
    p.add_argument("--preset", default="h100-llama3-8b", help="cost constants for waste / area")
    p.add_argument("--swap", action="store_true", help="enable the host-memory swap connector")
    p.add_argument("--host-swap-gb", type=float, default=4.0)
    p.add_argument(
        "--async-scheduler", action=argparse.BooleanOptionalAction, default=None, help=async_help
    )
    p.add_argument(
        "--tenant-from", default=None, metavar="SOURCE", type=_tenant_source,
        help="derive each request's tenant on the server, replacing the one its hints name: "
        "'api-key' (Authorization: Bearer; LAMPS_TENANT_KEYS may name a JSON file mapping keys "
        "to tenant names) or 'header:NAME' (set by an authenticating proxy); default: the "
        "client's lamps_tenant hint (adapters/vllm/tenant.py)",
    )  # fmt: skip


def _tenant_source(value: str) -> str:
    from adapters.vllm.tenant import ENV_SOURCE, TenantConfigError, TenantRule

    try:
        TenantRule.from_env({ENV_SOURCE: value})
    except TenantConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace(ENV_SOURCE, "--tenant-from")) from None
    return value


def _register_cluster(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster",
        help="start N serve replicas and vllm-router in front of them (session affinity)",
        description="Start N `lamps-agent serve` replicas on this machine and vLLM's router "
        "(the cluster extra) in front of them, routing every turn of an agent session to one "
        "replica by its X-Session-ID header (docs/vllm.md, 'Many replicas'). Runs until Ctrl-C "
        "or SIGTERM, then stops every process. Arguments after '--' go to every replica's vLLM.",
    )
    p.add_argument("--model", help="model folder (or name vLLM can load offline); required "
                   "unless --status")  # fmt: skip
    p.add_argument("--replicas", type=int, default=2, help="number of vLLM replicas")
    _add_engine_options(
        p,
        policy_help="the replicas' scheduler policy (default: lamps)",
        async_help="LampsAsyncScheduler (default: on where a GPU is present)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address of the router and the replicas")
    p.add_argument("--port", type=int, default=8000, help="the router's port")
    p.add_argument("--metrics-port", type=int, default=8001, help="the router's Prometheus port")
    p.add_argument("--replica-port", type=int, default=8100,
                   help="first replica's port; replica i listens on this + i")  # fmt: skip
    p.add_argument("--router-policy", default="sticky_least_loaded",
                   choices=["sticky_least_loaded", "consistent_hash"],
                   help="vllm-router's policy (both route by X-Session-ID)")  # fmt: skip
    p.add_argument("--router-arg", action="append", metavar="ARG",
                   help="an option for vllm-router, e.g. --router-arg=--log-level=debug (repeatable)")  # fmt: skip
    p.add_argument("--log-dir", default="cluster-logs",
                   help="replica and router logs, statistics files and cluster.json")  # fmt: skip
    p.add_argument("--reserved-cpus", type=int, default=None,
                   help="VLLM_CPU_NUM_OF_RESERVED_CPU for every replica (CPU build; default: 1 on a CPU-only machine)")  # fmt: skip
    p.add_argument("--gpus-per-replica", type=int, default=None,
                   help="CUDA_VISIBLE_DEVICES slice per replica (default: 1 where a GPU is present, else 0)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for start-up")
    p.add_argument("--no-restart", dest="restart", action="store_false",
                   help="leave a replica that dies dead (default: restart it after a back-off)")  # fmt: skip
    p.add_argument("--no-bind-cores", dest="bind_cores", action="store_false",
                   help="leave the CPU binding to vLLM (default: each replica's engine on cores of its own)")  # fmt: skip
    p.add_argument("--status", action="store_true",
                   help="report on the cluster running with this --log-dir and exit: 0 when the "
                   "router serves through at least one replica, 1 otherwise")  # fmt: skip
    p.add_argument(
        "--no-tools", dest="tools", action="store_false", default=argparse.SUPPRESS,
        help="serve without tool calling (no parser; for models that cannot call tools)",
    )  # fmt: skip
    p.add_argument("vllm_args", nargs=argparse.REMAINDER, help="options passed to every replica")
    p.set_defaults(handler=run_cluster)


class _Stop(Exception):
    """SIGTERM arrived: stop the cluster as Ctrl-C would."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def run_cluster(args: argparse.Namespace) -> int:
    import signal
    import time

    from adapters.vllm.tools.cluster import Cluster, ClusterError, ClusterOptions, cluster_status
    from adapters.vllm.tools.server import gpu_available

    if args.status:
        report = cluster_status(Path(args.log_dir))
        print(report.text())
        return 0 if report.ready else 1
    if not args.model:
        raise ValueError("the following argument is required: --model (unless --status)")
    gpu = gpu_available()
    opts = ClusterOptions(
        serve=_serve_options(args),
        replicas=args.replicas,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        replica_port=args.replica_port,
        router_policy=args.router_policy,
        router_args=tuple(args.router_arg or ()),
        log_dir=Path(args.log_dir),
        reserved_cpus=args.reserved_cpus
        if args.reserved_cpus is not None
        else (None if gpu else 1),
        gpus_per_replica=args.gpus_per_replica if args.gpus_per_replica is not None else int(gpu),
        bind_cores=args.bind_cores,
        restart=args.restart,
        timeout=args.timeout,
    )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    cluster = Cluster(opts)
    try:
        cluster.start()
        print(f"router: {cluster.url}/v1 (policy {opts.router_policy}); Ctrl-C stops all",
              file=sys.stderr)  # fmt: skip
        while cluster.router_alive():
            cluster.supervise()
            time.sleep(1.0)
        print("lamps-agent: the router exited; stopping the replicas", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    except ClusterError as exc:
        print(f"lamps-agent: error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the cluster …", file=sys.stderr)
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _serve_options(args: argparse.Namespace, **overrides: Any) -> Any:
    from adapters.vllm.tools.server import ServeOptions

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
        "tenant_from": getattr(args, "tenant_from", None),
        "vllm_args": tuple(vllm_args),
    }
    values.update(overrides)
    return ServeOptions(**values)


def run_serve(args: argparse.Namespace) -> int:
    from adapters.vllm.tools.server import server_command, server_env, tool_setup

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
        at = labels.index(STOCK) + 1 if STOCK in labels else 0
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

    from adapters.vllm.tools.replay import ReplayOptions, replay, summarize
    from adapters.vllm.tools.server import ManagedServer, scrape_metrics
    from lamps_agent.workloads.arrivals import poisson_workload

    programs = _fitting_programs(config.programs, args.vllm_arg or (), console)
    alone: dict[str, float] = {}
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
                programs,
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
            if args.unloaded:
                label = "stock" if "stock" in servers else next(iter(servers))
                alone = _report_unloaded(args, arrivals, qps, label, servers[label], alone,
                                         summaries, console)  # fmt: skip
    return summaries


def _report_unloaded(
    args: argparse.Namespace,
    arrivals: Sequence[Any],
    qps: float,
    label: str,
    url: str,
    alone: dict[str, float],
    summaries: Sequence[Any],
    console: Any,
) -> dict[str, float]:
    """``--unloaded``: each distinct program of the arrivals replayed alone on ``label``'s server,
    one after another (programs already timed at another rate are not replayed again); prints
    the unloaded mean and P99 over the arrivals beside the loaded P99 (median over rounds), and
    the room each policy leaves (:func:`room_over_floor`); appends them to ``unloaded.json``.
    Returns the E2E alone by program id."""
    import json
    import statistics

    import numpy as np

    from adapters.vllm.tools.replay import ReplayOptions, replay
    from lamps_agent.workloads.arrivals import Arrival

    todo = {a.program.program_id: a.program for a in arrivals if a.program.program_id not in alone}
    console.print(f"unloaded: {len(todo)} programs alone on {label} …")
    for i, program in enumerate(todo.values()):
        opts = ReplayOptions(
            url=url.rstrip("/"), model=args.model or _served_model(url),
            time_scale=args.time_scale, send_hints=not args.no_hints, vocab_high=args.vocab_high,
            seed=10_000 + i, session_prefix=f"alone{i}-",
        )  # fmt: skip
        (result,) = asyncio.run(replay([Arrival(0.0, program)], opts))
        alone[program.program_id] = result.finish - result.arrival
    e2e = [alone[a.program.program_id] for a in arrivals]
    p99 = float(np.percentile(e2e, 99))
    loaded = [s.e2e.p99 for s in summaries if s.policy == label and s.qps == qps]
    factor = statistics.median(loaded) / p99 if loaded and p99 > 0 else math.nan
    record = {"qps": qps, "server": label, "unloaded_mean_s": statistics.fmean(e2e),
              "unloaded_p99_s": p99, "loaded_p99_s": statistics.median(loaded) if loaded else None,
              "loaded_over_unloaded_p99": factor}  # fmt: skip
    room = room_over_floor(summaries, qps, record["unloaded_mean_s"])
    record["room_over_unloaded"] = room
    console.print(
        f"{label} unloaded at qps {qps:g}: mean {record['unloaded_mean_s']:.2f} s, P99 {p99:.2f} s "
        f"(each program alone); loaded P99 / unloaded P99 = {factor:.2f}"
    )
    console.print(
        "the most a scheduler could cut from each policy's mean E2E (down to each program "
        "alone): " + ", ".join(f"{policy} {100 * r:.0f} %" for policy, r in room.items())
    )
    path = Path(args.out) / "unloaded.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*previous, record], indent=2) + "\n")
    return alone


def room_over_floor(summaries: Sequence[Any], qps: float, floor: float) -> dict[str, float]:
    """Per policy at ``qps``: the share of its mean E2E (median over rounds) above ``floor``, the
    mean E2E with each program alone — what no scheduler can go below, as contention only adds to
    a program's time.  A target of ``x`` % lower than a policy is out of reach where its room is
    under ``x`` %."""
    from lamps_agent.bench.aggregate import group

    room = {}
    for row in group([s for s in summaries if s.qps == qps]):  # the table's rows, its medians
        mean = row.spread("e2e_mean").median
        room[row.policy] = round((mean - floor) / mean, 4) if mean > 0 else math.nan
    return room


def max_model_len(vllm_args: Sequence[str]) -> int | None:
    """``--max-model-len`` among vLLM options (``--max-model-len=N`` or ``--max-model-len N``),
    or None where it is not given (the server then takes the model's own limit)."""
    from adapters.vllm.tools.server import vllm_int_option

    return vllm_int_option(vllm_args, "--max-model-len")


def _fitting_programs(programs: Sequence[Any], vllm_args: Sequence[str], console: Any) -> list[Any]:
    """The programs a server with the given ``--max-model-len`` accepts; the others are left out
    (counted), and a workload of which none fits is refused."""
    from lamps_agent.workloads.scale import fitting

    limit = max_model_len(vllm_args)
    if limit is None:
        return list(programs)
    usable = fitting(programs, limit)
    if not usable:
        raise ValueError(
            f"no program fits --max-model-len {limit}: scale the workload (--token-scale)"
        )
    if len(usable) < len(programs):
        console.print(
            f"{len(programs) - len(usable)} of {len(programs)} programs are longer than "
            f"--max-model-len {limit}: left out"
        )
    return usable


def policy_options(specs: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--policy-options LABEL=JSON`` → options by server label; each label a plug-in server of
    the comparison (stock loads no policy)."""
    return cli_options.policy_options(specs, labels, excluded=(STOCK,))


def _start_servers(
    args: argparse.Namespace, stack: Any, managed_server: Any, console: Any
) -> dict[str, str]:
    """Start every server of a comparison (one port each), print their layout, and refuse a
    comparison whose servers are not laid out alike."""
    from adapters.vllm.tools.server import served_engine, server_layout

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    servers: dict[str, str] = {}
    layouts = {}
    labels = compare_labels(args.engine_policies)
    options = policy_options(args.policy_options or (), labels)
    for i, label in enumerate(labels):
        stats = (out / f"stats-{label}.json").resolve()  # the plug-in's counters, kept
        steps = (out / f"steps-{label}.jsonl").resolve()  # the plug-in's step log
        steps.unlink(missing_ok=True)
        opts = _serve_options(
            args, policy=server_policy(label), swap=args.swap, stats_file=str(stats),
            step_log=str(steps),
            vllm_args=tuple(args.vllm_arg or ()), async_scheduler=None, host="127.0.0.1",
            port=args.port + i, reserved_cpus=args.reserved_cpus,
            policy_options=options.get(label, {}),
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
    (out / ENGINE_FILE).write_text(json.dumps(served_engine(opts).fields(), indent=2) + "\n")
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
