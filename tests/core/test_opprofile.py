"""The operator-level profile on the CPU: a real timing of a tiny layer, its table, its preset."""

import dataclasses
import json
from pathlib import Path

import pytest

from lamps_agent.cli.main import main
from lamps_agent.errors import ConfigError
from lamps_agent.opcost import SHIPPED_TABLES, OperatorTable, compose, preset_fields
from lamps_agent.opprofile import SHAPES, Grid
from lamps_agent.presets import load_preset, write_preset_file

TINY_GRID = Grid(
    tokens=(1, 8, 64, 256),
    decode=((1, 64), (4, 64), (4, 256)),
    prefill=(32, 128, 256),
    reps=3,
)
TINY_ARGS = ["--tokens", "1,8,64,256", "--decode", "1x64,4x64,4x256", "--prefill", "32,128,256"]


def test_a_cpu_profile_writes_the_shipped_format_and_composes_into_a_preset(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    from lamps_agent.opprofile import profile_operators

    data = profile_operators(SHAPES.get("tiny"), grid=TINY_GRID, device="cpu", threads=1)
    data = json.loads(json.dumps(data))  # as a file holds it
    shipped = json.loads(
        (Path(__file__).parents[2] / "lamps_agent/data/gpu/h200_llama3-8b.json").read_text()
    )
    assert set(shipped) <= set(data)
    assert set(data["shape"]) == set(shipped["shape"])
    assert data["device"] == "cpu" and data["copy"] == {}  # no host<->device link on a CPU
    for key in ("gemm_ms", "lm_head_ms", "elementwise_ms", "decode_attn_ms", "prefill_attn_ms"):
        assert data[key] and all(ms > 0 for ms in data[key].values()), key
    assert set(data["decode_attn_ms"]) == {"1x64", "4x64", "4x256"}
    table = OperatorTable.from_json(data)
    terms = compose(table)
    path = tmp_path / "tiny.toml"
    base = load_preset("h200-llama3-8b-derived")
    write_preset_file(path, preset_fields(table, terms, base=base, when="now"))
    preset = load_preset(config_file=path)
    assert preset.model.n_layers == 2 and preset.model.n_kv_heads == 2
    assert preset.cost.base_ms == base.cost.base_ms
    assert preset.cost.swap_bytes_per_s == base.cost.swap_bytes_per_s  # none measured
    assert preset.cost.prefill_ms_per_token == terms.prefill_ms_per_token
    assert "CPU" in preset.description


def test_profile_ops_command_times_writes_and_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "tiny.toml"
    args = ["profile-ops", "--shape", "tiny", "--device", "cpu", "--threads", "1", "--reps", "3"]
    assert main([*args, *TINY_ARGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "per prefill token" in printed and f"wrote {out}" in printed
    assert json.loads((tmp_path / "tiny.ops.json").read_text())["model"] == "tiny shape"
    assert load_preset(config_file=out).model.name == "tiny"


def test_profile_ops_composes_a_shipped_table_without_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = Path(__file__).parents[2] / "lamps_agent/data/gpu/h200_llama3-70b-tp4.json"
    out = tmp_path / "tp4.json"
    args = ["profile-ops", "--shape", "llama3-70b-tp4", "--from-table", str(table)]
    assert main([*args, "--out", str(out)]) == 0
    assert "(+0%)" in capsys.readouterr().out  # the same table as the shipped one
    preset = load_preset(config_file=out)
    assert preset.cost.prefill_ms_per_token == pytest.approx(
        load_preset("h200-llama3-70b-tp4").cost.prefill_ms_per_token, rel=5e-3
    )


def test_profile_ops_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile-ops", "--out", str(tmp_path / "p.yaml")]) == 2
    assert "must end in .toml or .json" in capsys.readouterr().err
    assert main(["profile-ops", "--decode", "7", "--out", str(tmp_path / "p.toml")]) == 2
    assert "--decode" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SHIPPED_TABLES))
def test_the_profiled_shapes_are_those_of_the_shipped_tables(name: str) -> None:
    shipped = json.loads(
        (Path(__file__).parents[2] / "lamps_agent/data/gpu" / SHIPPED_TABLES[name]).read_text()
    )
    shape = SHAPES.get(name)
    assert shape.as_json() == shipped["shape"]
    assert shape.block_bytes(16, 2) == shipped["block_bytes"]
    assert load_preset(shape.base_preset).model.kv_bytes_per_token == (
        shape.model_shape().kv_bytes_per_token
    )


def test_a_grid_too_small_to_fit_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        Grid(tokens=(1,))


def test_the_copy_timing_names_its_copies_and_their_bandwidth() -> None:
    torch = pytest.importorskip("torch")
    from lamps_agent import opprofile

    # On a GPU the copies run host<->device; here both sides are host memory, the same code.
    grid = Grid(tokens=(1, 8), decode=((1, 8), (2, 8)), prefill=(8, 16), copy_blocks=4)
    grid = dataclasses.replace(grid, copy_big_bytes=1 << 20)
    timer = opprofile._Timer(torch, "cpu")
    run = opprofile._Run(torch, SHAPES.get("tiny"), grid, "cpu", torch.bfloat16, timer)
    run.result = {"copy": {}}
    opprofile._time_copies(run, block_bytes=8192)
    copies = run.result["copy"]
    assert set(copies) == {"d2h_blocks", "h2d_blocks", "d2h_1MiB", "h2d_1MiB"}
    assert all(c["ms"] > 0 and c["GB_per_s"] > 0 for c in copies.values())
