"""Operator-level profile of one model-shaped layer with torch (Vidur's method).

Times the operators one engine iteration is made of, for ONE layer on ONE GPU (a TP shard), on
whatever torch device is present (CUDA when there is one, else the CPU): the layer's four GEMMs
and the LM head at T tokens, decode attention of B sequences × 1 query over L context tokens,
causal prefill attention over T tokens, the unfused elementwise work, and KV block copies
host↔device through pinned memory (CUDA only).  Each time is the minimum over 3 batches of
repeated launches after warm-up (CUDA events on a GPU, ``perf_counter`` on the CPU).  Random
data; no weights needed.  The result is the JSON format of the shipped tables
(``lamps_agent/data/gpu``), which :mod:`lamps_agent.opcost` composes into a cost model.

Adapted from ``opprofile.py`` of the project's shared GPU measurements (the script that measured
the shipped H200 tables): same operators, shapes, grid and timing rule, with the grid, device and
dtype made parameters.  torch is imported inside the functions: the core does not depend on it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from lamps_agent.errors import ConfigError
from lamps_agent.kv_memory import ModelShape
from lamps_agent.registry import Registry


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerShape:
    """One GPU's layer: under tensor parallelism ``tp`` its heads, intermediate size and vocabulary
    are the shard's; ``base_preset`` is the preset a profile of it builds on."""

    name: str
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int
    tp: int = 1
    gated_mlp: bool = True  # gate + up (Llama); False: one fc_in (GPT-J)
    base_preset: str = "h200-llama3-8b-derived"

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "q_heads", "kv_heads", "head_dim", "vocab"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"shape {self.name}: {name} must be > 0")
        if self.layers <= 0 or self.tp <= 0 or self.q_heads % self.kv_heads:
            raise ConfigError(f"shape {self.name}: layers, tp > 0 and q_heads % kv_heads == 0")

    def as_json(self) -> dict[str, int]:
        keys = ("hidden", "intermediate", "q_heads", "kv_heads", "head_dim", "vocab", "layers")
        return {k: getattr(self, k) for k in keys}

    def model_shape(self, dtype_bytes: int = 2) -> ModelShape:
        """The whole model's KV shape (every shard's KV heads)."""
        return ModelShape(
            name=self.name,
            n_layers=self.layers,
            n_kv_heads=self.kv_heads * self.tp,
            head_dim=self.head_dim,
            dtype_bytes=dtype_bytes,
        )

    def block_bytes(self, block_tokens: int, dtype_bytes: int) -> int:
        """One GPU's share of a KV block: K and V of every layer."""
        return block_tokens * self.layers * self.kv_heads * self.head_dim * 2 * dtype_bytes


SHAPES: Registry[LayerShape] = Registry("shape")
for _shape in (
    LayerShape(name="llama3-8b", hidden=4096, intermediate=14336, q_heads=32, kv_heads=8,
               head_dim=128, vocab=128256, layers=32),
    LayerShape(name="llama3-70b-tp4", hidden=8192, intermediate=28672 // 4, q_heads=64 // 4,
               kv_heads=8 // 4, head_dim=128, vocab=128256 // 4, layers=80, tp=4,
               base_preset="h200-llama3-70b-tp4-derived"),
    LayerShape(name="gptj-6b", hidden=4096, intermediate=16384, q_heads=16, kv_heads=16,
               head_dim=256, vocab=50400, layers=28, gated_mlp=False,
               base_preset="h200-gptj6b-derived"),
    # A toy layer: the CPU path in a second, for tests and a first try.
    LayerShape(name="tiny", hidden=128, intermediate=256, q_heads=4, kv_heads=2, head_dim=32,
               vocab=512, layers=2),
):  # fmt: skip
    SHAPES.register(_shape.name)(_shape)


@dataclass(frozen=True, slots=True, kw_only=True)
class Grid:
    """What is timed; the defaults are the grid of the shipped H200 tables."""

    tokens: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
    lm_head_max: int = 1024  # the LM head is timed up to this many rows (max decode batch)
    decode: tuple[tuple[int, int], ...] = (
        (1, 512), (1, 2048), (1, 8192), (1, 32768), (8, 512), (8, 2048), (8, 8192), (8, 32768),
        (32, 512), (32, 2048), (32, 8192), (32, 32768), (128, 512), (128, 2048), (128, 8192),
        (256, 2048), (512, 2048),
    )  # fmt: skip
    prefill: tuple[int, ...] = (128, 512, 2048, 8192, 16384, 32768)
    copy_blocks: int = 512  # block-by-block copies host<->device (CUDA only; 0: none)
    copy_big_bytes: int = 1 << 30  # one large copy each way (0: none)
    block_tokens: int = 16
    reps: int = 20  # launches per timed batch (attention: half, prefill: a quarter)

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or len(self.prefill) < 2 or len(self.decode) < 2:
            raise ConfigError("the grid needs at least 2 token counts, prefills and decode shapes")
        if sum(1 for t in self.tokens if t <= self.lm_head_max) < 2:
            raise ConfigError("the grid needs at least 2 token counts up to lm_head_max")
        if min(self.tokens) < 1 or min(self.prefill) < 1 or self.reps < 1:
            raise ConfigError("token counts, prefills and reps must be >= 1")
        if any(b < 1 or length < 1 for b, length in self.decode):
            raise ConfigError("decode shapes must be BxL with B, L >= 1")


class _Timer:
    """Best of 3 batches of ``reps`` launches after ``warm`` launches, in ms per launch."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch, self.cuda = torch, device.startswith("cuda")

    def __call__(self, fn: Callable[[], object], reps: int, warm: int = 3) -> float:
        for _ in range(warm):
            fn()
        self._sync()
        best = float("inf")
        for _ in range(3):
            if self.cuda:
                start = self.torch.cuda.Event(enable_timing=True)
                end = self.torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(reps):
                    fn()
                end.record()
                self.torch.cuda.synchronize()
                ms = float(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                ms = (time.perf_counter() - t0) * 1000.0
            best = min(best, ms / reps)
        return best

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


@dataclass(slots=True)
class _Run:
    torch: Any
    shape: LayerShape
    grid: Grid
    device: str
    dtype: Any
    timer: _Timer
    result: dict[str, Any] = field(default_factory=dict)

    def tensor(self, *size: int, pinned: bool = False) -> Any:
        if pinned:  # host memory, page-locked when there is a device to copy to
            pin = self.device.startswith("cuda")
            return self.torch.empty(*size, dtype=self.dtype, pin_memory=pin)
        return self.torch.randn(*size, device=self.device, dtype=self.dtype) * 0.02


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def profile_operators(
    shape: LayerShape,
    *,
    grid: Grid | None = None,
    device: str | None = None,
    dtype: str = "bf16",
    threads: int | None = None,
) -> dict[str, Any]:
    """Time ``shape``'s operators on ``device`` (default: CUDA when present, else the CPU) and
    return the operator table (the shipped tables' JSON format, plus ``tp``, ``device``,
    ``dtype`` and ``dtype_bytes``).  ``threads`` sets torch's CPU threads for the run (on a
    shared CPU, 1 keeps other processes from stalling its thread pool)."""
    import torch

    grid = grid or Grid()
    device = device or default_device()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device}: torch sees no CUDA device")
        if ":" in device:  # CUDA events record on the current device
            torch.cuda.set_device(torch.device(device))
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ConfigError(f"dtype {dtype!r}; valid: {', '.join(dtypes)}")
    run = _Run(torch, shape, grid, device, dtypes[dtype], _Timer(torch, device))
    dtype_bytes = run.tensor(1).element_size()
    started = time.perf_counter()
    run.result = _header(run, dtype, dtype_bytes)
    threads_before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            _time_linear(run)
            _time_attention(run)
            if device.startswith("cuda"):
                _time_copies(run, shape.block_bytes(grid.block_tokens, dtype_bytes))
    finally:
        torch.set_num_threads(threads_before)
    run.result["block_bytes"] = shape.block_bytes(grid.block_tokens, dtype_bytes)
    run.result["method"] = (
        "one layer's operators, min over 3 batches of repeated launches after warm-up "
        "(Vidur's operator-level method); lamps_agent.opprofile"
    )
    run.result["wall_s"] = time.perf_counter() - started
    return run.result


def _header(run: _Run, dtype: str, dtype_bytes: int) -> dict[str, Any]:
    """What was timed where; the timings' tables start empty."""
    shape = run.shape
    return {
        "gpu": device_name(run.device),
        "torch": run.torch.__version__,
        "model": f"{shape.name} shape",
        "shape": shape.as_json(),
        "layers": shape.layers,
        "tp": shape.tp,
        "device": run.device,
        "dtype": dtype,
        "dtype_bytes": dtype_bytes,
        "gemm_ms": {},
        "lm_head_ms": {},
        "elementwise_ms": {},
        "decode_attn_ms": {},
        "prefill_attn_ms": {},
        "copy": {},
    }


def _time_linear(run: _Run) -> None:
    """The layer's four GEMMs, the LM head and the elementwise work at each token count."""
    s, mm = run.shape, run.torch.mm
    qkv_out, o_in = (s.q_heads + 2 * s.kv_heads) * s.head_dim, s.q_heads * s.head_dim
    weights = (
        run.tensor(s.hidden, qkv_out),
        run.tensor(o_in, s.hidden),
        run.tensor(s.hidden, (2 if s.gated_mlp else 1) * s.intermediate),  # GPT-J: no gate
        run.tensor(s.intermediate, s.hidden),
    )
    w_lm = run.tensor(s.hidden, s.vocab)
    for t in run.grid.tokens:
        x, xo, xi = run.tensor(t, s.hidden), run.tensor(t, o_in), run.tensor(t, s.intermediate)
        gemms = partial(_layer_gemms, mm, x, xo, xi, weights)
        run.result["gemm_ms"][t] = run.timer(gemms, run.grid.reps)
        if t <= run.grid.lm_head_max:
            run.result["lm_head_ms"][t] = run.timer(partial(mm, x, w_lm), run.grid.reps)
        elementwise = partial(_elementwise, run.torch.nn.functional, x, xi)
        run.result["elementwise_ms"][t] = run.timer(elementwise, run.grid.reps)


def _layer_gemms(mm: Any, x: Any, xo: Any, xi: Any, weights: tuple[Any, ...]) -> None:
    w_qkv, w_o, w_up, w_down = weights
    mm(x, w_qkv)
    mm(xo, w_o)
    mm(x, w_up)
    mm(xi, w_down)


def _elementwise(F: Any, x: Any, xi: Any) -> None:
    """Two RMSNorms, SiLU × mul and two residual adds, unfused (an upper bound)."""
    F.rms_norm(x, (x.shape[-1],))
    F.rms_norm(x, (x.shape[-1],))
    F.silu(xi) * xi
    x + x
    x + x


def _time_attention(run: _Run) -> None:
    """Decode attention (B × 1 query over L) and causal prefill attention over T tokens."""
    sdpa, s = run.torch.nn.functional.scaled_dot_product_attention, run.shape
    for b, length in run.grid.decode:
        q = run.tensor(b, s.q_heads, 1, s.head_dim)
        k, v = (run.tensor(b, s.kv_heads, length, s.head_dim) for _ in range(2))
        decode = partial(sdpa, q, k, v, enable_gqa=True)
        run.result["decode_attn_ms"][f"{b}x{length}"] = run.timer(
            decode, max(run.grid.reps // 2, 1)
        )
        del q, k, v, decode
        _empty_cache(run)
    for t in run.grid.prefill:
        q = run.tensor(1, s.q_heads, t, s.head_dim)
        k, v = (run.tensor(1, s.kv_heads, t, s.head_dim) for _ in range(2))
        prefill = partial(sdpa, q, k, v, is_causal=True, enable_gqa=True)
        run.result["prefill_attn_ms"][t] = run.timer(prefill, max(run.grid.reps // 4, 1))
        del q, k, v, prefill
        _empty_cache(run)


def _time_copies(run: _Run, block_bytes: int) -> None:
    """KV copies through pinned host memory: block by block, and one large copy, each way."""
    n, elem = run.grid.copy_blocks, block_bytes // run.tensor(1).element_size()
    cases: list[tuple[str, Callable[[], object], int]] = []
    if n:
        gpu_blocks, host_blocks = run.tensor(n, elem), run.tensor(n, elem, pinned=True)

        def d2h() -> None:
            for i in range(n):
                host_blocks[i].copy_(gpu_blocks[i], non_blocking=True)

        def h2d() -> None:
            for i in range(n):
                gpu_blocks[i].copy_(host_blocks[i], non_blocking=True)

        cases += [("d2h_blocks", d2h, n * block_bytes), ("h2d_blocks", h2d, n * block_bytes)]
    big = run.grid.copy_big_bytes
    if big:
        big_gpu = run.tensor(big // run.tensor(1).element_size())
        big_host = run.tensor(big // run.tensor(1).element_size(), pinned=True)
        size = f"{big >> 30}GiB" if big % (1 << 30) == 0 else f"{big >> 20}MiB"
        cases += [
            (f"d2h_{size}", lambda: big_host.copy_(big_gpu, non_blocking=True), big),
            (f"h2d_{size}", lambda: big_gpu.copy_(big_host, non_blocking=True), big),
        ]
    for name, fn, nbytes in cases:
        ms = run.timer(fn, reps=3, warm=1)
        run.result["copy"][name] = {"ms": ms, "GB_per_s": nbytes / ms / 1e6}


def _empty_cache(run: _Run) -> None:
    if run.device.startswith("cuda"):
        run.torch.cuda.empty_cache()


def device_name(device: str) -> str:
    """The device in words: the GPU's name, or the CPU's model and core count."""
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    return cpu_name()


def cpu_name() -> str:
    """The CPU's model and core count, in words."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} ({os.cpu_count()} cores)"
