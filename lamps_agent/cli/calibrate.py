"""``lamps-agent profile`` and ``lamps-agent validate``: calibrate the simulator on a real engine.

``profile`` times a vLLM engine's steps over a grid and writes a fitted preset file;
``validate`` replays one workload on the real engine and in the simulator with that preset, per
policy, and prints the error.  Both need the vllm extra: it is imported inside the handlers, so
the core runs without it (docs/benchmarks.md, "Simulator vs real engine").
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import time
from pathlib import Path
from typing import Any

from lamps_agent.cli import options
from lamps_agent.policies import POLICIES
from lamps_agent.presets import (
    ENGINE_FILE,
    MeasuredEngine,
    check_measured,
    load_preset,
    read_preset_file,
)
from lamps_agent.steps import write_step_log
from lamps_agent.workloads.infercept import BUILTIN_TRACES


def register_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "profile",
        help="fit a preset to a vLLM engine's measured step times",
        description="Time an in-process vLLM engine's steps over a grid of (prefill tokens, "
        "decode batch, resident KV, prefill context), fit the cost model by non-negative least "
        "squares and write a preset file (needs the vllm extra).",
    )
    _engine_options(p)
    p.add_argument("--out", type=Path, required=True, help="preset file to write (.toml or .json)")
    p.add_argument(
        "--from-step-log", type=Path, nargs="+", metavar="LOG",
        help="fit the engine as it was served instead: step logs a plug-in server wrote "
        "(LAMPS_STEP_LOG; bench --engine writes steps-LABEL.jsonl); no --model needed",
    )  # fmt: skip
    p.add_argument(
        "--engine-preset", type=Path,
        help="with --from-step-log: the engine's preset file (e.g. an in-process profile of the "
        "same engine) whose cost terms the served fit replaces; default: --base",
    )  # fmt: skip
    p.set_defaults(handler=run_profile)

    v = sub.add_parser(
        "validate",
        help="the simulator against the real engine on the same workload",
        description="Profile the engine as it serves (a plug-in server logs every step of a "
        "replay on other arrivals; the cost model is fitted to those steps) or take "
        "--preset-file (refused when it was measured on another engine), replay the same "
        "arrivals on a real vLLM server per policy and in the simulator with the fitted preset, "
        "and print the error of mean E2E, P99 E2E and recomputed tokens (needs the vllm extra).",
    )
    _engine_options(v)
    v.add_argument("--preset-file", type=Path, help="a fitted preset; skips profiling")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--trace", default="multi-api", help=f"a trace file or: {', '.join(BUILTIN_TRACES)}")  # fmt: skip
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic programs instead")
    v.add_argument("--policies", default="vllm,lamps,infercept",
                   help=f"simulator names (vllm = stock vLLM on the engine), from: {', '.join(POLICIES.names())}")  # fmt: skip
    v.add_argument("--token-scale", default="1", metavar="FACTOR",
                   help="multiply every token count of the programs, e.g. 1/32 for longctx:coding on the tiny model")  # fmt: skip
    v.add_argument(
        "--virtual", action="store_true",
        help="no server: run vLLM's own scheduler and KV-cache manager in-process on a virtual "
        "clock (each step as long as the cost model says) against the simulator, and compare "
        "them step by step (identical steps, first divergence, figures)",
    )  # fmt: skip
    v.add_argument("--rounds", type=int, default=3,
                   help="replays per policy on the served engine, interleaved (the engine's spread)")  # fmt: skip
    v.add_argument("--qps", type=float, default=2.0)
    v.add_argument("--num-programs", type=int, default=40)
    v.add_argument("--time-scale", type=float, default=0.02, help="multiply tool durations")
    v.add_argument("--no-swap", action="store_true", help="plug-in servers without the swap store")
    v.add_argument("--no-unloaded", action="store_true", help="skip the unloaded stock P99 pass")
    v.add_argument("--unloaded-programs", type=int, default=8,
                   help="replay alone only the N programs the fitted model ranks longest (0: all)")  # fmt: skip
    v.add_argument("--port", type=int, default=8011)
    v.add_argument("--out", type=Path, required=True, help="folder for preset, report and logs")
    v.set_defaults(handler=run_validate)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def _engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine", "as the served engine runs (validate's servers get these)")
    g.add_argument("--model", help="model folder (e.g. /tmp/tiny-llama); required to profile")
    g.add_argument("--kv-cache-bytes", type=int, default=3_000_000)
    g.add_argument("--block-size", type=int, default=32)
    g.add_argument("--max-num-seqs", type=int, default=16)
    g.add_argument("--max-model-len", type=int, default=4096)
    g.add_argument("--token-budget", type=int, default=2048, help="max_num_batched_tokens")
    g.add_argument("--decode-batches", type=_ints, default=(1, 4, 8, 16))
    g.add_argument("--contexts", type=_ints, default=(64, 256, 1024))
    g.add_argument("--prefills", type=_ints, default=(0, 128, 512, 1536))
    g.add_argument("--prefill-contexts", type=_ints, default=(0, 1024))
    g.add_argument("--steps-per-point", type=int, default=3)
    g.add_argument("--base", default="h100-llama3-8b", help="preset the fitted file builds on")
    g.add_argument("--host-swap-gb", type=float, default=4.0, help="the plug-in's swap store")
    g.add_argument("--seed", type=int, default=0)


def _profile_options(args: argparse.Namespace) -> Any:
    ProfileOptions = _adapter("profile").ProfileOptions

    load_preset(args.base)  # an unknown base fails now, with the valid names
    return ProfileOptions(
        model=args.model, kv_cache_bytes=args.kv_cache_bytes, block_size=args.block_size,
        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        token_budget=args.token_budget, decode_batches=args.decode_batches,
        contexts=args.contexts, prefills=args.prefills, prefill_contexts=args.prefill_contexts,
        steps_per_point=args.steps_per_point, seed=args.seed,
    )  # fmt: skip


def _adapter(name: str) -> Any:
    """``adapters.vllm.tools.<name>``, imported at run time: the core does not depend on the adapter
    (nor is it type-checked through it)."""
    return importlib.import_module(f"adapters.vllm.tools.{name}")


def _import_vllm_adapter() -> None:
    try:
        import vllm  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ValueError(f"this command needs the vllm extra: {exc}") from None


def profile_to_file(args: argparse.Namespace, out: Path) -> None:
    """Profile, fit, write ``out`` and print the fit's quality."""
    prof = _adapter("profile")

    opts = _profile_options(args)
    started = time.perf_counter()
    llm = prof.make_engine(opts)
    result = prof.profile(opts, llm=llm)
    del llm
    gc.collect()
    base = load_preset(args.base)
    cost = prof.fit_cost_model(result.samples, base=base.cost)
    quality = prof.fit_quality(cost, result.samples)
    fields = prof.preset_fields(
        result.facts, cost, quality, base=args.base, host_swap_gb=args.host_swap_gb,
        measured=prof.in_process_engine(opts, result.facts),
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    prof.write_preset(out, fields)
    prof.write_samples(out.with_suffix(".samples.csv"), result.samples)
    load_preset(config_file=out)  # what was written must load
    print(
        f"profiled {len(opts.grid()) - len(result.skipped)} grid points "
        f"({len(result.skipped)} skipped: do not fit the KV cache or the limits) in "
        f"{time.perf_counter() - started:.0f} s; engine: {result.facts.num_gpu_blocks} blocks "
        f"of {result.facts.block_size}, budget {result.facts.token_budget}"
    )
    for line in prof.iter_report(quality, cost):
        print(line)
    print(f"wrote {out} and its timed steps, {out.with_suffix('.samples.csv')}")


def run_profile(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".toml", ".json"):
        raise ValueError(f"--out {args.out}: must end in .toml or .json")
    if args.from_step_log:
        return fit_served(args)
    _need_model(args)
    _import_vllm_adapter()
    profile_to_file(args, args.out)
    return 0


def _need_model(args: argparse.Namespace) -> None:
    if not args.model:
        raise ValueError("--model is required (the model folder the engine serves)")


def fit_served(args: argparse.Namespace) -> int:
    """Fit the cost model to a served engine's step logs: a quarter of the step shapes held
    back, the fit judged on them (R², median per-shape error) and its worst residuals shown."""
    prof = _adapter("profile")
    steplog = importlib.import_module("adapters.vllm.steplog")
    records = [r for path in args.from_step_log for r in steplog.read_step_log(path)]
    samples = prof.samples_from_step_log(records)
    fit, back = prof.held_back(samples)
    if not back:
        raise ValueError("the step logs hold too few step shapes to hold any back")
    engine = load_preset(args.base, config_file=args.engine_preset)
    cost = prof.fit_cost_model(fit, base=engine.cost)
    on_fit, on_back = prof.fit_quality(cost, fit), prof.fit_quality(cost, back)
    print(f"{len(records)} served steps from {len(args.from_step_log)} log(s)")
    print(f"fit:       R² {on_fit.r2:.3f}, median error {on_fit.median_rel_error:.1%} over {on_fit.samples} steps")  # fmt: skip
    print(f"held back: R² {on_back.r2:.3f}, median error {on_back.median_rel_error:.1%}, max {on_back.max_rel_error:.1%} over {on_back.samples} steps")  # fmt: skip
    print("worst held-back step shapes (prefill tok, decodes, resident KV: measured ms, error):")
    for s, err in prof.residuals(cost, back)[:8]:
        print(f"  {s.prefill_tokens:5d} {s.decode_seqs:3d} {s.resident_kv_tokens:6d}: {s.ms:7.2f} ms {err:+.0%}")  # fmt: skip
    for line in list(prof.iter_report(on_fit, cost))[1:]:  # the terms
        print(line)
    fields: dict[str, Any] = {"base": args.base} if args.engine_preset is None else {}
    if args.engine_preset is not None:
        fields = read_preset_file(args.engine_preset)
    fields["description"] = (
        f"fitted by lamps-agent profile --from-step-log on {len(records)} served steps; held-back "
        f"R² {on_back.r2:.3f}, median error {on_back.median_rel_error:.0%}"
    )
    fields["cost"] = {**fields.get("cost", {}), **{n: getattr(cost, n) for n in prof.FEATURES}}
    fields["measured"] = _served_engine(args.from_step_log).fields()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prof.write_preset(args.out, fields)
    load_preset(config_file=args.out)  # what was written must load
    print(f"wrote {args.out}")
    return 0


def _served_engine(logs: list[Path]) -> MeasuredEngine:
    """The engine the step logs were written on: ``engine.json`` beside them (``bench --engine
    compare`` writes it); all the logs' engines must agree.  Without one only "served" is known."""
    engines = set()
    for log in logs:
        path = log.parent / ENGINE_FILE
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {path}: {exc}") from None
            engines.add(MeasuredEngine.from_fields(data, source=str(path)))
        else:
            print(f"note: no {ENGINE_FILE} beside {log}: the preset records only that the engine was served")  # fmt: skip
            engines.add(MeasuredEngine(how="served"))
    if len(engines) > 1:
        raise ValueError("the step logs come from engines with different settings: fit them apart")
    return engines.pop()


def run_validate(args: argparse.Namespace) -> int:
    _need_model(args)
    _import_vllm_adapter()
    val = _adapter("validate")

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for policy in policies:
        POLICIES.get(policy)  # lists the valid names on a typo
    if not policies:
        raise ValueError("--policies: give at least one")
    if args.rounds < 1:
        raise ValueError("--rounds: at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    programs, name = options.scaled_workload(args)
    opts = val.ValidateOptions(
        engine=_profile_options(args), policies=policies, qps=args.qps,
        num_programs=args.num_programs, time_scale=args.time_scale, seed=args.seed,
        swap=not args.no_swap, port=args.port, unloaded=not args.no_unloaded,
        unloaded_programs=args.unloaded_programs, log_dir=args.out, rounds=args.rounds,
    )  # fmt: skip
    usable, arrivals = val.workload(programs, opts)
    print(f"{name}: {len(usable)} of {len(programs)} programs fit; {len(arrivals)} arrivals")
    if args.virtual:
        return _validate_virtual(args, val, opts, usable, arrivals, name)
    preset_file = args.preset_file
    if preset_file is None:
        preset_file = val.profile_served(usable, opts, base=args.base, out=args.out / "preset.json")
    else:
        engine = _adapter("server").served_engine(val.serve_options(opts, "vllm"))
        if check_measured(preset_file, engine) is None:  # another engine's file: an error
            print(f"note: {preset_file} does not say which engine it was measured on: not checked")
    preset = load_preset(config_file=preset_file)
    sim = val.simulate(usable, preset, opts, name)
    real, unloaded = val.replay_real(
        arrivals, opts, name, preset_file=preset_file.resolve(), preset=preset
    )
    report = val.compare(
        real, sim, name=name, programs=len(arrivals), qps=args.qps, unloaded_p99=unloaded
    )
    lines = val.report_lines(report)
    print("\n".join(lines))
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"wrote {args.out / 'report.md'}, {args.out / 'report.json'}")
    return 0


def _validate_virtual(
    args: argparse.Namespace, val: Any, opts: Any, programs: Any, arrivals: Any, name: str
) -> int:
    """``validate --virtual``: the simulator against vLLM's scheduler on a virtual clock."""
    prof = _adapter("profile")
    facts = prof.config_facts(opts.engine)
    preset = val.engine_preset(facts, load_preset(args.base, config_file=args.preset_file))
    print(
        f"virtual engine: {facts.num_gpu_blocks} blocks of {facts.block_size}, budget "
        f"{facts.token_budget}, {facts.max_num_seqs} seqs; cost model of "
        f"{args.preset_file or args.base}; no host memory (no KV connector)"
    )
    comparisons = val.compare_virtual(
        programs, arrivals, preset, model=opts.engine.model,
        max_model_len=opts.engine.max_model_len, policies=opts.policies, name=name,
        qps=opts.qps, seed=opts.seed,
    )  # fmt: skip
    header = f"{name}: {len(arrivals)} programs, qps {opts.qps:g}, virtual clock"
    lines = val.virtual_report_lines(comparisons, header=header)
    print("\n".join(lines))
    (args.out / "report-virtual.md").write_text("\n".join(lines) + "\n")
    for c in comparisons:
        write_step_log(args.out / f"steps-sim-{c.policy}.jsonl", c.sim_steps)
        write_step_log(args.out / f"steps-virtual-{c.policy}.jsonl", c.engine_steps)
    print(f"wrote {args.out / 'report-virtual.md'} and both sides' steps (steps-*.jsonl)")
    return 0
