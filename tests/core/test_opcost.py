"""Composing operator timings into cost-model terms: the fits, the knee, the shipped tables."""

import json
from pathlib import Path

import pytest

from lamps_agent.errors import ConfigError
from lamps_agent.opcost import SHIPPED_TABLES, OperatorTable, compose, fit_line, preset_fields
from lamps_agent.presets import load_preset, write_preset_file


def _table(**changes: object) -> dict[str, object]:
    """A synthetic one-layer table with known slopes (2 layers)."""
    data: dict[str, object] = {
        "gpu": "test",
        "model": "toy shape",
        "shape": {"hidden": 64, "kv_heads": 2, "head_dim": 16},
        "layers": 2,
        # flat at 0.1 ms (weight reads) until T = 64, then 0.002 ms per token
        "gemm_ms": {"1": 0.1, "16": 0.1, "64": 0.2, "128": 0.328, "256": 0.584},
        "lm_head_ms": {"1": 0.05, "64": 0.12, "128": 0.184},
        "decode_attn_ms": {
            "1x100": 0.01 + 1e-5 * 100,
            "4x100": 0.01 + 1e-5 * 400,
            "8x1000": 0.01 + 1e-5 * 8000,
        },
        "prefill_attn_ms": {str(t): 0.005 + 0.3 * t * t / 2 / 1e6 for t in (100, 400, 1000)},
        "elementwise_ms": {"1": 0.01, "256": 0.02},
        "copy": {"d2h_blocks": {"GB_per_s": 40.0}, "h2d_blocks": {"GB_per_s": 30.0}},
    }
    data.update(changes)
    return data


def test_fit_line_is_least_squares_with_r2() -> None:
    fit = fit_line([1, 2, 3, 4], [3, 5, 7, 9.5])
    assert fit.slope == pytest.approx(2.15) and fit.intercept == pytest.approx(0.75)
    assert 0.99 < fit.r2 < 1 and fit.points == 4
    with pytest.raises(ConfigError, match="at least 2"):
        fit_line([1], [1])


def test_compose_takes_the_compute_bound_slope_and_the_other_terms() -> None:
    terms = compose(OperatorTable.from_json(_table()))
    # GEMMs: the points from T = 64 (twice the T = 1 time) on: slope 0.002 ms per layer
    assert terms.fits["gemm"].points == 3
    assert terms.prefill_ms_per_token == pytest.approx(2 * 0.002)
    lm_slope = (0.184 - 0.12) / 64  # LM head from T = 64 (0.12 >= 2 × 0.05)
    assert terms.decode_ms_per_seq == pytest.approx(2 * 0.002 + lm_slope)
    assert terms.kv_ms_per_token == pytest.approx(2 * 1e-5)
    assert terms.prefill_attn_ms_per_mtok2 == pytest.approx(2 * 0.3)
    assert terms.swap_bytes_per_s == pytest.approx(30e9)  # the slower direction
    assert terms.small_batch_ms == pytest.approx(2 * 0.1 + 0.05)
    assert terms.allreduce_ms_per_token == 0.0
    assert all(fit.r2 == pytest.approx(1.0) for fit in terms.fits.values())


def test_tensor_parallel_needs_the_interconnect() -> None:
    table = OperatorTable.from_json(_table(), tp=2)
    with pytest.raises(ConfigError, match="interconnect"):
        compose(table)
    terms = compose(table, interconnect_bytes_per_s=100e9)
    assert terms.allreduce_ms_per_token == pytest.approx(2 * 2 * 64 * 2 * 1 / 100e9 * 1e3)
    assert terms.swap_bytes_per_s == pytest.approx(2 * 30e9)
    assert table.model_shape().n_kv_heads == 4  # both shards' KV heads


def test_a_falling_fit_is_noise_and_costs_nothing() -> None:
    noisy = _table(decode_attn_ms={"1x100": 0.05, "4x100": 0.02, "8x1000": 0.01})
    terms = compose(OperatorTable.from_json(noisy))
    assert terms.kv_ms_per_token == 0.0
    assert any("not positive" in line for line in terms.report())


def test_a_table_without_copies_keeps_the_base_bandwidth() -> None:
    terms = compose(OperatorTable.from_json(_table(copy={})))
    assert terms.swap_bytes_per_s is None
    base = load_preset("h200-llama3-8b-derived")
    assert terms.cost_model(base_ms=1.0, fallback=base.cost).swap_bytes_per_s == (
        base.cost.swap_bytes_per_s
    )


def test_bad_tables_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an operator table"):
        OperatorTable.from_json({"layers": 2})
    with pytest.raises(ConfigError, match="not an operator table"):
        OperatorTable.from_json(_table(gemm_ms={"1": -1.0, "2": 1.0}))
    with pytest.raises(ConfigError, match="cannot read"):
        OperatorTable.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="valid: llama3-8b"):
        OperatorTable.shipped("b200")


@pytest.mark.parametrize("shape", sorted(SHIPPED_TABLES))
def test_every_shipped_table_composes_into_a_preset_file_that_loads(
    shape: str, tmp_path: Path
) -> None:
    tp = 4 if shape.endswith("tp4") else 1
    table = OperatorTable.shipped(shape, tp=tp)
    terms = compose(table, interconnect_bytes_per_s=450e9)
    base = load_preset("h200-llama3-70b-tp4-derived" if tp == 4 else "h200-llama3-8b-derived")
    path = tmp_path / "p.toml"
    write_preset_file(path, preset_fields(table, terms, base=base, when="now"))
    preset = load_preset(config_file=path)
    assert preset.cost.prefill_ms_per_token == terms.prefill_ms_per_token
    assert preset.cost.base_ms == base.cost.base_ms and preset.gpu_kv_gb == base.gpu_kv_gb
    assert preset.model.n_layers == table.layers
    assert f"kept from {base.name}" in preset.description
    json_path = tmp_path / "p.json"
    write_preset_file(
        json_path, json.loads(json.dumps(preset_fields(table, terms, base=base, when="now")))
    )
    assert load_preset(config_file=json_path) == preset
