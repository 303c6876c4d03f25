import json

import pytest

from lamps_agent.errors import ConfigError, UnknownNameError
from lamps_agent.presets import PRESETS, load_preset, parse_overrides


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
