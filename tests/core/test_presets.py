import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from lamps_agent import physics
from lamps_agent.errors import ConfigError, UnknownNameError
from lamps_agent.opcost import SHIPPED_TABLES, OperatorTable, compose
from lamps_agent.presets import (
    MEASURED,
    PRESETS,
    MeasuredEngine,
    check_measured,
    load_preset,
    parse_overrides,
    read_measured,
    write_preset_file,
)


def test_presets_exist_with_their_capacities() -> None:
    assert {"a100-gptj6b", "a100-vicuna13b", "h100-llama3-8b", "h200-llama3-8b"} <= set(
        PRESETS.names()
    )
    gptj = load_preset("a100-gptj6b")
    assert gptj.gpu_kv_gb == pytest.approx(26.4)  # 40 GB cap incl. weights (test_physics.py)
    assert gptj.num_gpu_blocks == int(26.4e9 // (458_752 * 16))
    assert gptj.cost.prefill_ms_per_token == 0.0463 and gptj.cost.base_ms == 10.0


def test_overrides_from_cli_strings() -> None:
    preset = load_preset(
        "a100-gptj6b", overrides=parse_overrides(["gpu_kv_gb=20", "cost.base_ms=12"])
    )
    assert preset.gpu_kv_gb == 20.0 and preset.cost.base_ms == 12.0
    assert preset.cost.prefill_ms_per_token == 0.0463  # untouched


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["nonsense=1"], "unknown preset field 'nonsense'"),
        (["cost.nope=1"], "unknown preset field 'cost.nope'"),
        (["gpu_kv_gb=abc"], "cannot use 'abc'"),
        (["gpu_kv_gb=-3"], "gpu_kv_gb must be > 0"),
        (["cost.base_ms=-1"], "base_ms must be finite"),
    ],
)
def test_bad_overrides_are_clear_errors(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_preset("a100-gptj6b", overrides=parse_overrides(items))


def test_override_syntax_error() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["gpu_kv_gb"])


def test_config_files_toml_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    toml = tmp_path / "p.toml"
    toml.write_text('base = "h100-llama3-8b"\ngpu_kv_gb = 30\n[cost]\nbase_ms = 7.5\n')
    preset = load_preset(config_file=toml)
    assert preset.name == "h100-llama3-8b" and preset.gpu_kv_gb == 30 and preset.cost.base_ms == 7.5
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"token_budget": 512}))
    assert load_preset("a100-vicuna13b", config_file=js).token_budget == 512
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        load_preset(config_file=bad)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(
        UnknownNameError, match="valid: a100-gptj6b, a100-vicuna13b, h100-llama3-70b-tp4, "
    ):
        load_preset("b200")


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_measured_presets_are_the_composition_of_their_shipped_tables(name: str) -> None:
    terms = MEASURED[name]
    table = OperatorTable.shipped(terms.table, tp=terms.tp)
    composed = compose(table, interconnect_bytes_per_s=physics.H200_SXM.interconnect_bytes_per_s)
    cost = load_preset(name).cost
    for field in ("prefill_ms_per_token", "decode_ms_per_seq", "kv_ms_per_token"):
        assert getattr(cost, field) == pytest.approx(getattr(composed, field), rel=5e-3), field
    assert cost.prefill_attn_ms_per_mtok2 == pytest.approx(
        composed.prefill_attn_ms_per_mtok2, rel=5e-3
    )
    assert cost.swap_bytes_per_s == pytest.approx(composed.swap_bytes_per_s, rel=5e-3)
    assert all(fit.r2 > 0.98 for fit in composed.fits.values())


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_measured_presets_keep_the_derived_base_and_capacity_and_say_so(name: str) -> None:
    measured, derived = load_preset(name), load_preset(f"{name}-derived")
    assert measured.cost.base_ms == derived.cost.base_ms
    assert measured.gpu_kv_gb == derived.gpu_kv_gb and measured.model == derived.model
    assert SHIPPED_TABLES[MEASURED[name].table] in measured.description
    assert f"kept from {name}-derived" in measured.description


def test_tp4_preset_adds_the_all_reduce_the_table_lacks() -> None:
    table = OperatorTable.shipped("llama3-70b-tp4", tp=4)
    with_link = compose(table, interconnect_bytes_per_s=450e9)
    alone = compose(OperatorTable.shipped("llama3-70b-tp4", tp=1))
    # 2 all-reduces per layer × 80 layers × 8192 × 2 B, a ring moving 2·3/4 of them, at 450 GB/s
    allreduce_ms = 2 * 80 * 8192 * 2 * 2 * 3 / 4 / 450e9 * 1e3
    assert with_link.allreduce_ms_per_token == pytest.approx(allreduce_ms)
    assert with_link.prefill_ms_per_token == pytest.approx(
        alone.prefill_ms_per_token + allreduce_ms
    )
    assert with_link.swap_bytes_per_s == pytest.approx(4 * alone.swap_bytes_per_s)  # type: ignore[operator]
    assert "all-reduce" in load_preset("h200-llama3-70b-tp4").description


def _table_rows(text: str, header: str) -> set[str]:
    """The first-column names of the markdown table whose header row starts with ``header``."""
    lines = text.split("\n" + header, 1)[1].splitlines()[2:]
    rows = itertools.takewhile(lambda line: line.startswith("|"), lines)
    return {re.findall(r"^\| `([^`]+)`", row)[0] for row in rows}


def test_docs_list_exactly_the_registered_presets() -> None:
    root = Path(__file__).resolve().parents[2]
    scheduling = (root / "docs" / "scheduling.md").read_text()
    assert _table_rows(scheduling, "| preset |") == set(PRESETS.names())
    readme = (root / "README.md").read_text()
    listed = readme.split("Presets (", 1)[1].split("(override", 1)[0]
    assert set(re.findall(r"`([^`]+)`", listed)) == set(PRESETS.names())


# -- the engine a fitted preset was measured on --------------------------------------------------
def _measured_file(tmp_path: Path, **measured: object) -> Path:
    path = tmp_path / "fitted.toml"
    write_preset_file(
        path,
        {
            "base": "h100-llama3-8b",
            "cost": {"base_ms": 1.0},
            "measured": {"how": "served", **measured},
        },
    )
    return path


def test_a_fitted_preset_records_its_engine_and_still_loads(tmp_path: Path) -> None:
    path = _measured_file(tmp_path, block_size=32, kv_cache_bytes=3_000_000, reserved_cpus=1)
    assert load_preset(config_file=path).cost.base_ms == 1.0
    measured = read_measured(path)
    assert measured == MeasuredEngine(
        how="served", block_size=32, kv_cache_bytes=3_000_000, reserved_cpus=1
    )
    assert read_measured(_plain_file(tmp_path)) is None


def _plain_file(tmp_path: Path) -> Path:
    path = tmp_path / "plain.json"
    write_preset_file(path, {"base": "h100-llama3-8b"})
    return path


def test_a_run_on_another_engine_than_the_preset_s_is_refused_naming_each_difference(
    tmp_path: Path,
) -> None:
    path = _measured_file(tmp_path, block_size=32, kv_cache_bytes=3_000_000, reserved_cpus=1)
    same = MeasuredEngine(how="served", block_size=32, kv_cache_bytes=3_000_000, reserved_cpus=1)
    assert check_measured(path, same) is not None
    # what the run does not know is not compared
    assert check_measured(path, MeasuredEngine(block_size=32)) is not None
    other = MeasuredEngine(how="in-process", block_size=16, kv_cache_bytes=3_000_000)
    with pytest.raises(ConfigError) as err:
        check_measured(path, other)
    text = str(err.value)
    assert "how: measured served, this run in-process" in text
    assert "block_size: measured 32, this run 16" in text and "kv_cache_bytes" not in text
    assert (
        check_measured(_plain_file(tmp_path), other) is None
    )  # nothing recorded: nothing to check


def test_a_malformed_measured_table_is_a_clear_error(tmp_path: Path) -> None:
    for bad, match in (({"how": "guessed"}, "measured.how"), ({"blocks": 3}, "unknown"),
                       ({"block_size": "big"}, "measured")):  # fmt: skip
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"base": "h100-llama3-8b", "measured": bad}))
        with pytest.raises(ConfigError, match=match):
            load_preset(config_file=path)


def test_the_plug_in_refuses_a_preset_measured_on_another_engine(tmp_path: Path) -> None:
    from adapters.vllm.config import PluginConfig, check_preset_engine

    path = _measured_file(tmp_path, block_size=32, max_num_seqs=16, model="tiny-llama")
    vllm_config = SimpleNamespace(
        cache_config=SimpleNamespace(block_size=32, kv_cache_memory_bytes=None),
        scheduler_config=SimpleNamespace(max_num_batched_tokens=2048, max_num_seqs=16),
        model_config=SimpleNamespace(model="/tmp/tiny-llama", max_model_len=4096),
    )
    config = PluginConfig(preset_file=str(path))
    check_preset_engine(config, vllm_config, "0.32.0")  # the same engine: starts
    vllm_config.scheduler_config.max_num_seqs = 64
    with pytest.raises(ConfigError, match="max_num_seqs: measured 16, this run 64"):
        check_preset_engine(config, vllm_config, "0.32.0")
    check_preset_engine(PluginConfig(), vllm_config, "0.32.0")  # no preset file: nothing to check
