"""Presets derived from datasheets: the arithmetic, the capacity, and sanity between GPUs."""

import dataclasses
import json

import pytest

from lamps_agent import physics
from lamps_agent.errors import ConfigError
from lamps_agent.presets import PRESETS, load_preset


def _h100_8b(**changes: object) -> physics.Deployment:
    base = physics.Deployment(
        gpu=physics.H100_SXM,
        model=physics.LLAMA3_8B,
        memory_cap_gb=72.0,
        activation_gb=4.0,
        step_overhead_ms=1.5,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_llama3_8b_on_h100_arithmetic() -> None:
    d = _h100_8b()
    cost = d.cost_model()
    # 16.06 GB of weights at 0.8 × 3.35 TB/s, plus 1.5 ms of CPU per step
    assert cost.base_ms == pytest.approx(16.06e9 / 2.68e12 * 1e3 + 1.5)
    # 2 × 8.03e9 FLOPs at 0.55 × 989 TFLOP/s
    assert cost.prefill_ms_per_token == pytest.approx(16.06e9 / 543.95e12 * 1e3)
    assert cost.decode_ms_per_seq == cost.prefill_ms_per_token
    # 131,072 KV bytes per token at 2.68 TB/s
    assert cost.kv_ms_per_token == pytest.approx(131_072 / 2.68e12 * 1e3)
    # 1e6 pairs × 4 × 32 layers × 32 heads × 128 at 0.4 × 989 TFLOP/s
    assert cost.prefill_attn_ms_per_mtok2 == pytest.approx(1e6 * 524_288 / 395.6e12 * 1e3)
    assert cost.swap_bytes_per_s == pytest.approx(0.6 * 64e9)
    # 72 GB cap − 16.06 GB weights − 4 GB activations
    assert d.kv_gb == pytest.approx(51.94)


def test_tensor_parallel_splits_weights_and_adds_all_reduces() -> None:
    tp4 = physics.Deployment(
        gpu=physics.H100_SXM,
        model=physics.LLAMA3_70B,
        tp=4,
        memory_cap_gb=72.0,
        activation_gb=5.0,
        step_overhead_ms=1.5,
    )
    weights_ms = 141.1e9 / 4 / 2.68e12 * 1e3
    assert tp4.base_ms() == pytest.approx(weights_ms + 1.5 + 2 * 80 * 0.008)
    compute = 141.1e9 / 4 / 543.95e12
    allreduce = 2 * 80 * 8192 * 2 * 2 * 3 / 4 / 450e9
    assert tp4.token_ms() == pytest.approx((compute + allreduce) * 1e3)
    assert tp4.kv_gb == pytest.approx(4 * (72.0 - 141.1 / 4 - 5.0))
    assert tp4.swap_bytes_per_s() == pytest.approx(4 * 0.6 * 64e9)


def test_capacity_refuses_a_model_that_does_not_fit() -> None:
    with pytest.raises(ConfigError, match="no memory left for KV"):
        physics.Deployment(
            gpu=physics.H100_SXM,
            model=physics.LLAMA3_70B,
            tp=2,
            memory_cap_gb=72.0,
            activation_gb=5.0,
            step_overhead_ms=1.5,
        )
    with pytest.raises(ConfigError, match="interconnect"):
        _h100_8b(gpu=dataclasses.replace(physics.H100_SXM, interconnect_bytes_per_s=0.0), tp=2)
    with pytest.raises(ConfigError, match="flops_eff"):
        _h100_8b(flops_eff=1.5)


def test_faster_memory_is_cheaper_and_bigger_memory_holds_more() -> None:
    h100, h200 = load_preset("h100-llama3-8b"), load_preset("h200-llama3-8b-derived")
    assert h200.cost.base_ms < h100.cost.base_ms
    assert h200.cost.kv_ms_per_token < h100.cost.kv_ms_per_token
    assert h200.cost.prefill_ms_per_token == h100.cost.prefill_ms_per_token  # same bf16 FLOPs
    assert h200.gpu_kv_tokens > 2 * h100.gpu_kv_tokens
    big = load_preset("h100-llama3-70b-tp4")
    assert big.cost.base_ms > h100.cost.base_ms and big.cost.prefill_ms_per_token > (
        h100.cost.prefill_ms_per_token
    )
    assert load_preset("h200-llama3-70b-tp4-derived").gpu_kv_gb > big.gpu_kv_gb


def test_a100_gptj6b_as_the_lamps_paper_ran_it() -> None:
    p = load_preset("a100-gptj6b")
    # 40 GB cap − 12.1 GB of fp16 weights − 1.5 GB activations
    assert p.gpu_kv_gb == pytest.approx(26.4)
    assert p.num_gpu_blocks == int(26.4e9 // (458_752 * 16))
    # INFERCEPT's fit kept; the KV read and attention from the datasheet added
    assert (p.cost.base_ms, p.cost.prefill_ms_per_token) == (10.0, 0.0463)
    assert p.cost.kv_ms_per_token == pytest.approx(458_752 / (0.8 * 2.039e12) * 1e3)
    assert p.cost.prefill_attn_ms_per_mtok2 > 0
    assert p.token_budget == 2048


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_round_trips_through_a_preset_file(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    preset = load_preset(name)
    fields = {
        "base": name,
        "gpu_kv_gb": preset.gpu_kv_gb,
        "token_budget": preset.token_budget,
        "cost": {f.name: getattr(preset.cost, f.name) for f in dataclasses.fields(preset.cost)},
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fields))
    assert load_preset(config_file=path) == preset
