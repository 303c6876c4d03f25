"""``lamps-agent validate``: the simulator against the real engine, on the same workload.

The workload's tool times are scaled once (``time_scale``) and programs longer than the engine's
``max_model_len`` are left out; the same Poisson arrivals (same seed) are then replayed against a
real vLLM server per policy (stock vLLM for the simulator's ``vllm``, the plug-in for the others)
and simulated with the fitted preset.  Per policy the report holds mean E2E, P99 E2E and
recomputed tokens from both sides with the relative error, and whether the two rank the
policies alike (by mean E2E).  Every server runs with the same CPU layout
(``VLLM_CPU_NUM_OF_RESERVED_CPU=1``) and the same engine options as the profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.vllm.config import STOCK, loads_plugin
from adapters.vllm.tools.profile import ProfileOptions
from adapters.vllm.tools.server import ServeOptions
from lamps_agent.bench.runner import BenchConfig, RunSpec, run_one
from lamps_agent.metrics import RunSummary
from lamps_agent.presets import Preset
from lamps_agent.program import Program
from lamps_agent.stepdiff import StepDiff, compare_steps
from lamps_agent.steps import StepRecord
from lamps_agent.workloads.arrivals import Arrival, poisson_workload
from lamps_agent.workloads.scale import fitting

RESERVED = 1  # VLLM_CPU_NUM_OF_RESERVED_CPU of every server: the same CPU layout for all
PROFILE_POLICY = "vllm"  # the profile's server: the plug-in, ordering as stock vLLM does
PROFILE_SEED = 7919  # the profile replays arrivals of seed + this: not the ones validated
SIM_STOCK = "vllm"  # the simulator's model of stock vLLM, validated against the stock server
ENGINE_POLICY = {SIM_STOCK: STOCK}  # the simulator's name -> the server's (plug-in policy names)
TARGETS = {"e2e_mean": 0.10, "e2e_p99": 0.15, "recomputed": 0.10, "steps": 0.05}


@dataclass(frozen=True, kw_only=True)
class ValidateOptions:
    engine: ProfileOptions  # the served engine's settings (model, KV, block, limits)
    policies: Sequence[str]
    qps: float
    num_programs: int
    time_scale: float
    seed: int = 0
    swap: bool = True  # plug-in servers get the host swap store (stock has none)
    port: int = 8011
    rounds: int = 1  # replays per policy, interleaved (A B C A B C …): the engine's own spread
    unloaded: bool = True  # also replay programs alone on the stock server
    # ... only the programs the fitted model ranks longest alone (0: all); P99 of n programs
    # interpolates between the two longest, so a handful of the longest gives it
    unloaded_programs: int = 8
    log_dir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Metric:
    real: float  # the median over the rounds
    sim: float
    real_low: float | None = None  # the rounds' range (None: one round)
    real_high: float | None = None

    @classmethod
    def over_rounds(cls, reals: Sequence[float], sim: float) -> Metric:
        if len(reals) == 1:
            return cls(real=reals[0], sim=sim)
        return cls(
            real=statistics.median(reals), sim=sim, real_low=min(reals), real_high=max(reals)
        )

    @property
    def real_spread(self) -> float | None:
        """The engine's own run-to-run spread, (high − low) / median."""
        if self.real_low is None or self.real_high is None or not self.real:
            return None
        return (self.real_high - self.real_low) / self.real

    @property
    def rel_error(self) -> float:
        """(sim − real) / real; NaN where the real value is 0."""
        return (self.sim - self.real) / self.real if self.real else math.nan


@dataclass(frozen=True, kw_only=True)
class EngineDiagnostics:
    """What the real engine did, from its ``/metrics``, to tell which part of the model errs."""

    steps: int
    preemptions: int
    mean_itl_ms: float  # mean inter-token latency: about one decode step


@dataclass(frozen=True, kw_only=True)
class PolicyComparison:
    policy: str
    e2e_mean: Metric
    e2e_p99: Metric
    recomputed: Metric
    steps: Metric
    preemptions: Metric
    real_mean_itl_ms: float | None = None

    def within_targets(self) -> dict[str, bool]:
        return {
            name: abs(getattr(self, name).rel_error) <= bound for name, bound in TARGETS.items()
        }


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    workload: str
    programs: int
    qps: float
    comparisons: tuple[PolicyComparison, ...]
    unloaded_p99: float | None  # stock, each program alone (real engine)

    @property
    def ranking_real(self) -> list[str]:
        return [c.policy for c in sorted(self.comparisons, key=lambda c: c.e2e_mean.real)]

    @property
    def ranking_sim(self) -> list[str]:
        return [c.policy for c in sorted(self.comparisons, key=lambda c: c.e2e_mean.sim)]

    @property
    def ranking_agrees(self) -> bool:
        """The simulator orders every pair the engine tells apart as the engine does.  A pair
        whose mean E2E ranges over the rounds overlap is no difference on the engine (its own
        spread), so either order agrees with it; with one round every pair counts."""
        for a, b in itertools.combinations([c.e2e_mean for c in self.comparisons], 2):
            order = _real_order(a, b)
            if order and order != _sign(a.sim - b.sim):
                return False
        return True

    def ranking_real_text(self) -> str:
        """The real ranking, ``≈`` between neighbours whose ranges over the rounds overlap."""
        ranked = sorted(self.comparisons, key=lambda c: c.e2e_mean.real)
        text = ranked[0].policy if ranked else ""
        for prev, c in itertools.pairwise(ranked):
            text += (" < " if _real_order(prev.e2e_mean, c.e2e_mean) else " ≈ ") + c.policy
        return text

    @property
    def load_factor(self) -> float | None:
        """Stock vLLM's P99 under this load over its unloaded P99 (the target wants >= 2)."""
        stock = [c for c in self.comparisons if c.policy == SIM_STOCK]
        if not stock or not self.unloaded_p99:
            return None
        return stock[0].e2e_p99.real / self.unloaded_p99

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for c, d in zip(self.comparisons, out["comparisons"], strict=True):
            for name in TARGETS:
                d[name]["rel_error"] = getattr(c, name).rel_error
            d["within_targets"] = c.within_targets()
        out.update(
            ranking_real=self.ranking_real,
            ranking_sim=self.ranking_sim,
            ranking_agrees=self.ranking_agrees,
            load_factor=self.load_factor,
        )
        return out


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _real_order(a: Metric, b: Metric) -> int:
    """−1 / +1 where the engine puts ``a`` below / above ``b`` beyond its own spread (their
    ranges over the rounds are apart), 0 where it cannot tell them apart."""
    if a.real_low is None or a.real_high is None or b.real_low is None or b.real_high is None:
        return _sign(a.real - b.real)
    if a.real_high < b.real_low:
        return -1
    if b.real_high < a.real_low:
        return 1
    return 0


def scale_tools(programs: Sequence[Program], time_scale: float) -> list[Program]:
    """The programs with every tool duration multiplied by ``time_scale``."""
    return [
        dataclasses.replace(
            p,
            segments=tuple(
                dataclasses.replace(s, tool_duration=s.tool_duration * time_scale)
                for s in p.segments
            ),
        )
        for p in programs
    ]


def workload(
    programs: Sequence[Program], opts: ValidateOptions
) -> tuple[list[Program], list[Arrival]]:
    usable = fitting(scale_tools(programs, opts.time_scale), opts.engine.max_model_len)
    if not usable:
        raise ValueError(f"no program fits max_model_len {opts.engine.max_model_len}")
    arrivals = poisson_workload(
        usable, qps=opts.qps, seed=opts.seed, num_programs=opts.num_programs
    )
    return usable, arrivals


def simulate(
    programs: Sequence[Program], preset: Preset, opts: ValidateOptions, name: str
) -> dict[str, RunSummary]:
    config = BenchConfig(
        programs=programs,
        trace_name=name,
        preset=dataclasses.replace(preset, max_model_len=opts.engine.max_model_len),
        qps=[opts.qps],
        calibrate=True,  # the served plug-in discounts the clients' hints by default
        policies=list(opts.policies),
        seed=opts.seed,
        num_programs=opts.num_programs,
    )
    return {
        policy: run_one(
            config, RunSpec(policy=policy, predictor="oracle-hints", qps=opts.qps)
        ).summary
        for policy in opts.policies
    }


def engine_args(engine: ProfileOptions) -> tuple[str, ...]:
    """The server options that make it the engine the profile measured."""
    return (
        f"--kv-cache-memory-bytes={engine.kv_cache_bytes}",
        "--enforce-eager",
        f"--block-size={engine.block_size}",
        f"--max-model-len={engine.max_model_len}",
        f"--max-num-seqs={engine.max_num_seqs}",
        f"--max-num-batched-tokens={engine.token_budget}",
        "--enable-prefix-caching",
    )


def replay_real(
    arrivals: Sequence[Arrival],
    opts: ValidateOptions,
    name: str,
    *,
    preset_file: Path,
    preset: Preset,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, list[tuple[RunSummary, EngineDiagnostics]]], float | None]:
    """Each policy's server, the same arrivals replayed on each, ``rounds`` times interleaved;
    the unloaded P99 from the stock server after its loaded runs (so its cache does not help
    the measured ones)."""
    with _server_environment(preset_file):
        return _replay_servers(arrivals, opts, name, preset=preset, say=say)


def serve_options(opts: ValidateOptions, policy: str, **more: Any) -> ServeOptions:
    """Every validate server alike: the engine's options, one reserved core, and the swap store's
    connector on every server (stock too, where it moves nothing), as ``bench --engine compare``
    runs them — so the profile's server is the engine every policy is replayed on."""
    from adapters.vllm.tools.server import ServeOptions

    values: dict[str, Any] = {
        "model": opts.engine.model, "policy": policy, "preset": "h100-llama3-8b",
        "swap": opts.swap, "port": opts.port, "tools": False,
        "vllm_args": engine_args(opts.engine), "reserved_cpus": RESERVED,
    }  # fmt: skip
    return ServeOptions(**{**values, **more})


def profile_served(
    programs: Sequence[Program],
    opts: ValidateOptions,
    *,
    base: str,
    out: Path,
    say: Callable[[str], None] = print,
) -> Path:
    """Profile the engine as it serves: the plug-in with the stock order (``vllm`` policy) logs
    every step (``LAMPS_STEP_LOG``) while the workload is replayed on arrivals of another seed;
    the cost model is fitted to those steps (a quarter of the step shapes held back to judge it)
    and written to ``out`` with the engine's shape read from the server's start-up log and its
    settings in ``[measured]``."""
    from adapters.vllm.tools import profile as prof
    from adapters.vllm.tools.server import ManagedServer, served_engine
    from lamps_agent.presets import load_preset
    from lamps_agent.steps import read_step_log

    assert opts.log_dir is not None
    steps = opts.log_dir / "steps-profile.jsonl"
    steps.unlink(missing_ok=True)
    serve = serve_options(opts, PROFILE_POLICY, step_log=str(steps.resolve()))
    arrivals = poisson_workload(
        programs, qps=opts.qps, seed=opts.seed + PROFILE_SEED, num_programs=opts.num_programs
    )
    log = opts.log_dir / "server-profile.log"
    say(
        f"profiling the served engine: {len(arrivals)} programs on seed {opts.seed + PROFILE_SEED} …"
    )
    with _server_environment(None), ManagedServer(serve, log_path=log) as server:
        results = asyncio.run(_replay(server.url, arrivals, opts, seed=opts.seed + PROFILE_SEED))
    records = read_step_log(steps)
    samples = prof.samples_from_step_log(records)
    fit, back = prof.held_back(samples)
    if not back or len({s.shape_key for s in fit}) < len(prof.FEATURES):
        raise ValueError(
            f"the profiling replay ran {len({s.shape_key for s in samples})} step shapes: a fit needs "
            f"{len(prof.FEATURES)} to fit and more to judge it; replay more programs "
            "(--num-programs) or give a fitted --preset-file"
        )
    cost = prof.fit_cost_model(fit, base=load_preset(base).cost)
    on_back = prof.fit_quality(cost, back)
    facts = prof.served_facts(log.read_text(errors="replace"), opts.engine)
    fields = prof.preset_fields(
        facts, cost, on_back, base=base, host_swap_gb=4.0, measured=served_engine(serve)
    )
    real_e2e = statistics.mean(r.finish - r.arrival for r in results)
    frontend, sim_e2e = frontend_per_turn(fields, programs, arrivals, real_e2e, opts)
    fields["cost"]["frontend_ms_per_turn"] = frontend * 1000.0
    say(
        f"served profile: mean E2E {real_e2e:.2f} s at the client, {sim_e2e:.2f} s simulated "
        f"on the fitted steps alone: {frontend * 1000:.0f} ms per turn outside the engine"
    )
    fields["description"] = (
        f"fitted by lamps-agent validate on {len(records)} served steps of {facts.model}; "
        f"held-back R² {on_back.r2:.3f}, median error {on_back.median_rel_error:.0%}"
    )
    prof.write_preset(out, fields)
    load_preset(config_file=out)  # what was written must load
    say(
        f"served profile: {len(records)} steps; held back: R² {on_back.r2:.3f}, median error "
        f"{on_back.median_rel_error:.1%} over {on_back.samples} steps; wrote {out}"
    )
    return out


def frontend_per_turn(
    fields: dict[str, Any], programs: Sequence[Program], arrivals: Sequence[Arrival],
    real_e2e: float, opts: ValidateOptions,
) -> tuple[float, float]:  # fmt: skip
    """Seconds per turn the served engine's clients lose outside its steps (the HTTP server, the
    client, the cores they share with the engine's scheduler): what makes the profiling replay's
    mean E2E at the client longer than the simulator's on the fitted step costs alone, spread
    over its turns (two fixed-point rounds: the delay itself changes the load).  Returns it and
    the simulated mean E2E without it."""
    from lamps_agent.presets import load_preset

    turns = statistics.mean(len(a.program.segments) for a in arrivals)
    frontend = 0.0
    base_e2e = math.nan
    for _ in range(3):
        cost = {**fields["cost"], "frontend_ms_per_turn": frontend * 1000.0}
        preset = load_preset(str(fields["base"]), overrides={**_shape(fields), "cost": cost})
        config = BenchConfig(
            programs=programs, trace_name="profile", preset=preset, qps=[opts.qps],
            policies=[SIM_STOCK], seed=opts.seed, num_programs=len(arrivals),
        )  # fmt: skip
        spec = RunSpec(policy=SIM_STOCK, predictor="oracle-hints", qps=opts.qps)
        sim_e2e = run_one(config, spec, list(arrivals)).summary.e2e.mean
        if math.isnan(base_e2e):
            base_e2e = sim_e2e
        frontend = max(frontend + (real_e2e - sim_e2e) / turns, 0.0)
    return frontend, base_e2e


def _shape(fields: dict[str, Any]) -> dict[str, Any]:
    """A preset file's engine fields, as overrides of its base."""
    keys = ("gpu_kv_gb", "host_swap_gb", "block_size", "token_budget", "max_num_seqs")
    shape: dict[str, Any] = {k: fields[k] for k in keys if k in fields}
    model = {k: v for k, v in fields.get("model", {}).items() if k != "name"}
    if model:
        shape["model"] = model
    return shape


@contextlib.contextmanager
def _server_environment(preset_file: Path | None) -> Iterator[None]:
    """The servers' environment (they inherit ours), restored afterwards: a caller's process
    (a test session with in-process engines) keeps its own."""
    saved = dict(os.environ)
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # servers as users run them
    if preset_file is not None:
        os.environ["LAMPS_PRESET_FILE"] = str(
            preset_file
        )  # the plug-in decides on the fitted costs
    else:
        os.environ.pop("LAMPS_PRESET_FILE", None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _replay_servers(
    arrivals: Sequence[Arrival],
    opts: ValidateOptions,
    name: str,
    *,
    preset: Preset,
    say: Callable[[str], None],
) -> tuple[dict[str, list[tuple[RunSummary, EngineDiagnostics]]], float | None]:
    """Every policy's server up at once; ``rounds`` rounds, each replaying the arrivals on every
    server in turn (new token and session ids per round: no round finds another's prefixes)."""
    from adapters.vllm.tools.server import ManagedServer

    runs: dict[str, list[tuple[RunSummary, EngineDiagnostics]]] = {p: [] for p in opts.policies}
    unloaded: float | None = None
    with contextlib.ExitStack() as stack:
        urls = {}
        for i, policy in enumerate(opts.policies):
            served = ENGINE_POLICY.get(policy, policy)
            serve = serve_options(
                opts, served, port=opts.port + i,
                stats_file=str(opts.log_dir / f"stats-{served}.json") if opts.log_dir else None,
            )  # fmt: skip
            log = opts.log_dir / f"server-{served}.log" if opts.log_dir else None
            say(f"starting vLLM ({served}) on port {opts.port + i} …")
            urls[policy] = stack.enter_context(ManagedServer(serve, log_path=log)).url
        for rnd in range(opts.rounds):
            for policy, url in urls.items():
                say(f"round {rnd + 1}/{opts.rounds}: {policy} …")
                runs[policy].append(_replay_once(url, arrivals, opts, policy, name, rnd))
        stock = [p for p in opts.policies if not loads_plugin(ENGINE_POLICY.get(p, p))]
        if stock and opts.unloaded:
            unloaded = _unloaded_p99(urls[stock[0]], arrivals, opts, preset)
    return runs, unloaded


def _replay_opts(url: str, opts: ValidateOptions, seed: int | None = None, rnd: int = 0) -> Any:
    from adapters.vllm.tools.replay import ReplayOptions

    # Tool times are already scaled in the programs: the replay waits them as they are.
    seed = opts.seed * 1000 + rnd if seed is None else seed
    return ReplayOptions(url=url, model=opts.engine.model, time_scale=1.0, seed=seed,
                         session_prefix=f"r{rnd}-")  # fmt: skip


async def _replay(
    url: str, arrivals: Sequence[Arrival], opts: ValidateOptions, *, seed: int
) -> Any:
    from adapters.vllm.tools.replay import replay

    return await replay(arrivals, _replay_opts(url, opts, seed))


def _replay_once(
    url: str, arrivals: Sequence[Arrival], opts: ValidateOptions, policy: str, name: str,
    rnd: int = 0,
) -> tuple[RunSummary, EngineDiagnostics]:  # fmt: skip
    from adapters.vllm.tools.replay import replay, summarize
    from adapters.vllm.tools.server import scrape_metrics

    before = scrape_metrics(url)
    results = asyncio.run(replay(arrivals, _replay_opts(url, opts, rnd=rnd)))
    after = scrape_metrics(url)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    computed = delta("vllm:prompt_tokens_total") - delta("vllm:prompt_tokens_cached_total")
    summary = summarize(
        results, policy=policy, trace=name, qps=opts.qps, seed=opts.seed,
        prefill_computed=int(computed), time_scale=1.0,
    )  # fmt: skip
    itl_count = delta("vllm:inter_token_latency_seconds_count")
    diag = EngineDiagnostics(
        steps=int(delta("vllm:iteration_tokens_total_count")),
        preemptions=int(delta("vllm:num_preemptions_total")),
        mean_itl_ms=1000 * delta("vllm:inter_token_latency_seconds_sum") / itl_count
        if itl_count
        else math.nan,
    )
    return summary, diag


def alone_seconds(program: Program, preset: Preset) -> float:
    """The fitted model's estimate of a program's E2E alone on the engine."""
    cost = preset.cost
    total = program.total_tool_time
    for seg in program.segments:
        total += cost.prefill_time(seg.prompt_tokens, preset.token_budget)
        total += seg.output_tokens * cost.iteration_time(0, 1, seg.prompt_tokens)
    return total


def _unloaded_p99(
    url: str, arrivals: Sequence[Arrival], opts: ValidateOptions, preset: Preset
) -> float:
    """P99 E2E with each program alone on the engine (one after another).  With
    ``unloaded_programs`` = k, only the k the model ranks longest are replayed; the others count
    as 0 s, which leaves the P99 exact as long as the two truly longest are among the k."""
    import numpy as np

    from adapters.vllm.tools.replay import replay

    chosen = sorted(arrivals, key=lambda a: alone_seconds(a.program, preset), reverse=True)
    if opts.unloaded_programs:
        chosen = chosen[: opts.unloaded_programs]
    e2e = [0.0] * (len(arrivals) - len(chosen))
    for arrival in chosen:
        (result,) = asyncio.run(replay([Arrival(0.0, arrival.program)], _replay_opts(url, opts)))
        e2e.append(result.finish - result.arrival)
    return float(np.percentile(e2e, 99))


def compare(
    real: dict[str, list[tuple[RunSummary, EngineDiagnostics]]], sim: dict[str, RunSummary], *,
    name: str, programs: int, qps: float, unloaded_p99: float | None,
) -> ValidationReport:  # fmt: skip
    """Each policy's simulated figures against the engine's median over its rounds (with their
    range, the engine's own spread)."""

    def metric(
        runs: list[tuple[RunSummary, EngineDiagnostics]], get: Any, sim_value: float
    ) -> Metric:
        return Metric.over_rounds([float(get(r, d)) for r, d in runs], float(sim_value))

    comparisons = []
    for policy, runs in real.items():
        s = sim[policy]
        itl = [d.mean_itl_ms for _, d in runs if not math.isnan(d.mean_itl_ms)]
        comparisons.append(PolicyComparison(
            policy=policy,
            e2e_mean=metric(runs, lambda r, d: r.e2e.mean, s.e2e.mean),
            e2e_p99=metric(runs, lambda r, d: r.e2e.p99, s.e2e.p99),
            recomputed=metric(runs, lambda r, d: r.recomputed_tokens, s.recomputed_tokens),
            steps=metric(runs, lambda r, d: d.steps, s.iterations),
            preemptions=metric(runs, lambda r, d: d.preemptions, s.preemptions),
            real_mean_itl_ms=statistics.median(itl) if itl else math.nan,
        ))  # fmt: skip
    return ValidationReport(
        workload=name, programs=programs, qps=qps, comparisons=tuple(comparisons),
        unloaded_p99=unloaded_p99,
    )  # fmt: skip


def report_lines(report: ValidationReport) -> list[str]:
    """The report as a Markdown table and a verdict; with rounds, each real value is the median
    and its range over the rounds follows it."""

    def pct(m: Metric) -> str:
        return "n/a" if math.isnan(m.rel_error) else f"{m.rel_error:+.1%}"

    def real(m: Metric, fmt: str) -> str:
        text = format(m.real, fmt)
        if m.real_low is not None and m.real_high is not None:
            text += f" ({format(m.real_low, fmt)}–{format(m.real_high, fmt)})"
        return text

    lines = [
        f"{report.workload}: {report.programs} programs, qps {report.qps:g}",
        "",
        "| policy | E2E mean real s | sim s | err | E2E P99 real s | sim s | err "
        "| recomputed real | sim | err | steps real | sim | err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.comparisons:
        lines.append(
            f"| {c.policy} | {real(c.e2e_mean, '.2f')} | {c.e2e_mean.sim:.2f} | {pct(c.e2e_mean)} "
            f"| {real(c.e2e_p99, '.2f')} | {c.e2e_p99.sim:.2f} | {pct(c.e2e_p99)} "
            f"| {real(c.recomputed, ',.0f')} | {c.recomputed.sim:,.0f} | {pct(c.recomputed)} "
            f"| {real(c.steps, ',.0f')} | {c.steps.sim:,.0f} | {pct(c.steps)} |"
        )
    lines.append("")
    for c in report.comparisons:
        spread, itl = c.e2e_mean.real_spread, c.real_mean_itl_ms
        lines.append(
            f"{c.policy}: preemptions real {real(c.preemptions, ',.0f')} / sim "
            f"{c.preemptions.sim:,.0f}; real mean inter-token latency "
            + (f"{itl:.1f} ms" if itl is not None and not math.isnan(itl) else "n/a")
            + (
                f"; the engine's own spread of mean E2E over the rounds {spread:.1%}"
                if spread is not None
                else ""
            )
        )
    lines.append("")
    agree = "agrees" if report.ranking_agrees else "DIFFERS"
    lines.append(
        f"ranking by mean E2E: real {report.ranking_real_text()}; sim "
        f"{' < '.join(report.ranking_sim)} ({agree}; ≈: the rounds' ranges overlap, no "
        "difference on the engine)"
    )
    if report.unloaded_p99 is not None:
        factor = report.load_factor
        lines.append(
            f"stock unloaded P99 {report.unloaded_p99:.2f} s"
            + (f"; loaded/unloaded P99 = {factor:.2f} (target >= 2)" if factor else "")
        )
    missed = [
        f"{c.policy} {name}" for c in report.comparisons
        for name, ok in c.within_targets().items() if not ok
    ]  # fmt: skip
    lines.append(
        "targets (mean 10 %, P99 15 %, recomputed 10 %, steps 5 %): "
        + ("all met" if not missed else "missed: " + ", ".join(missed))
    )
    return lines


# -- the virtual-clock engine against the simulator, step by step ------------------------------
@dataclass(frozen=True, kw_only=True)
class VirtualComparison:
    """One policy's run in the simulator and on the virtual-clock vLLM engine, same arrivals."""

    policy: str
    diff: StepDiff  # A: the simulator, B: the engine
    sim: RunSummary
    engine: RunSummary
    sim_steps: list[StepRecord]
    engine_steps: list[StepRecord]


def engine_preset(facts: Any, preset: Preset) -> Preset:
    """``preset``'s cost model on the engine ``facts`` describe (model shape, KV blocks, block
    size, limits), without host memory: the virtual engine has no KV connector, so the plug-in
    cannot swap there and neither may the simulator."""
    block_bytes = facts.kv_bytes_per_token * facts.block_size
    engine = preset.with_overrides({
        "model": {"n_layers": facts.n_layers, "n_kv_heads": facts.n_kv_heads,
                  "head_dim": facts.head_dim, "dtype_bytes": facts.dtype_bytes},
        "block_size": facts.block_size, "token_budget": facts.token_budget,
        "max_num_seqs": facts.max_num_seqs, "host_swap_gb": 0.0,
        # half a block more than the blocks: the preset's floor division lands on them exactly
        "gpu_kv_gb": (facts.num_gpu_blocks + 0.5) * block_bytes / 1e9,
    })  # fmt: skip
    if engine.num_gpu_blocks != facts.num_gpu_blocks:
        raise AssertionError(f"{engine.num_gpu_blocks} blocks, not {facts.num_gpu_blocks}")
    return engine


def compare_virtual(
    programs: Sequence[Program], arrivals: Sequence[Arrival], preset: Preset, *,
    model: str, max_model_len: int, policies: Sequence[str], name: str, qps: float, seed: int,
) -> list[VirtualComparison]:  # fmt: skip
    """Each policy in the simulator (recording its steps) and on the virtual-clock engine (vLLM's
    own scheduler for ``vllm``, the plug-in for the others), with exact hints on both sides."""
    from adapters.vllm.tools.virtual import STOCK_POLICY, VirtualOptions, run_virtual
    from lamps_agent.metrics import RunLabels

    # the engine's longest context caps predicted growth on both sides (the plug-in's own)
    preset = dataclasses.replace(preset, max_model_len=max_model_len)
    config = BenchConfig(
        programs=programs, trace_name=name, preset=preset, qps=[qps], policies=list(policies),
        seed=seed, num_programs=len(arrivals), calibrate=True,  # as the plug-in's default
    )  # fmt: skip
    out = []
    for policy in policies:
        steps: list[StepRecord] = []
        # the plug-in hears exact hints, which carry no returned tokens: so does the simulator
        spec = RunSpec(policy=policy, predictor="oracle-hints", qps=qps)
        sim = run_one(config, spec, list(arrivals), steps=steps).summary
        engine_policy = STOCK_POLICY if policy == SIM_STOCK else policy
        run = run_virtual(
            VirtualOptions(model=model, preset=preset, policy=engine_policy,
                           max_model_len=max_model_len, seed=seed),
            arrivals,
        )  # fmt: skip
        labels = RunLabels(policy=policy, predictor="oracle", trace=name, qps=qps, seed=seed)
        out.append(VirtualComparison(
            policy=policy, diff=compare_steps(steps, run.steps), sim=sim,
            engine=run.summary(labels), sim_steps=steps, engine_steps=run.steps,
        ))  # fmt: skip
    return out


def virtual_report_lines(comparisons: Sequence[VirtualComparison], *, header: str) -> list[str]:
    """Per policy: the share of identical steps, the first divergence, and the figures."""
    lines = [header, ""]
    lines.append(
        "| policy | identical steps | lockstep | steps sim / engine | E2E mean sim / engine s "
        "| P99 sim / engine s | recomputed sim / engine | preemptions sim / engine |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in comparisons:
        d, s, e = c.diff, c.sim, c.engine
        lines.append(
            f"| {c.policy} | {d.identical_share:.1%} | {d.lockstep:,} | {d.a.steps:,} / "
            f"{d.b.steps:,} | {s.e2e.mean:.3f} / {e.e2e.mean:.3f} | {s.e2e.p99:.3f} / "
            f"{e.e2e.p99:.3f} | {s.recomputed_tokens:,} / {e.recomputed_tokens:,} | "
            f"{d.a.preemptions} / {d.b.preemptions} |"
        )
    lines.append("")
    for c in comparisons:
        first = c.diff.first.describe(("sim", "engine")) if c.diff.first else "none"
        lines.append(f"{c.policy}: first divergence: {first}")
    return lines
