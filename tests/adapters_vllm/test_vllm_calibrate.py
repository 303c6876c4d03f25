"""``lamps-agent profile`` and ``validate`` against the real (CPU) engine with the tiny model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from adapters.vllm.tools.profile import (
    ProfileOptions,
    fit_cost_model,
    fit_quality,
    in_process_engine,
    predict_ms,
    preset_fields,
    profile,
    write_preset,
)
from lamps_agent.cli.main import main
from lamps_agent.presets import load_preset, read_measured

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Held-out step times: the fit's median ratio predicted / measured must lie within this factor.
# Not an accuracy target (the machine is shared, step times drift by 5x from minute to minute;
# docs/benchmarks.md, "Simulator vs real engine"): it catches a broken fit — wrong features, a
# sign error, a unit slip of 1000x.
SANITY_FACTOR = 10.0


def test_profile_fits_held_out_steps_and_writes_a_loadable_preset(
    tiny_model: Path, tmp_path: Path
) -> None:
    opts = ProfileOptions(
        model=str(tiny_model), kv_cache_bytes=2 * 2**20, max_num_seqs=8, max_model_len=2048,
        decode_batches=(1, 4, 7), contexts=(64, 512), prefills=(0, 256, 1024),
        prefill_contexts=(0, 512), steps_per_point=2,
    )  # fmt: skip
    result = profile(opts)
    points = sorted({s.point for s in result.samples})
    assert len(points) >= 10 and result.facts.num_gpu_blocks > 0
    train = [s for s in result.samples if s.point % 2 == 0]
    held = [s for s in result.samples if s.point % 2 == 1]
    cost = fit_cost_model(train)
    assert cost.prefill_ms_per_token > 0  # prefill work costs time on any engine
    ratio = statistics.median(predict_ms(cost, s) / s.ms for s in held)
    assert 1 / SANITY_FACTOR <= ratio <= SANITY_FACTOR

    quality = fit_quality(cost, train)
    fields = preset_fields(result.facts, cost, quality, base="h100-llama3-8b", host_swap_gb=1.0,
                           measured=in_process_engine(opts, result.facts))  # fmt: skip
    path = tmp_path / "fitted.toml"
    write_preset(path, fields)
    preset = load_preset(config_file=path)
    assert preset.num_gpu_blocks == result.facts.num_gpu_blocks
    assert preset.block_size == 32 and preset.max_num_seqs == 8 and preset.token_budget == 2048
    assert preset.kv_bytes_per_token == 2 * 2 * 1 * 64 * result.facts.dtype_bytes  # tiny Llama
    assert preset.cost.base_ms == pytest.approx(cost.base_ms)
    measured = read_measured(path)
    assert measured is not None and measured.how == "in-process" and measured.block_size == 32


def test_validate_end_to_end_reports_both_sides(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "validate"
    rc = main([
        "validate", "--model", str(tiny_model), "--synthetic", "4", "--num-programs", "8",
        "--qps", "4", "--time-scale", "0.01", "--policies", "vllm,lamps", "--no-unloaded",
        "--kv-cache-bytes", str(2 * 2**20), "--max-num-seqs", "8", "--max-model-len", "2048",
        "--decode-batches", "1,4", "--contexts", "64,512", "--prefills", "0,256",
        "--prefill-contexts", "0", "--steps-per-point", "2", "--port", "8031", "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [c["policy"] for c in report["comparisons"]] == ["vllm", "lamps"]
    for c in report["comparisons"]:
        for name in ("e2e_mean", "e2e_p99"):
            real, sim = c[name]["real"], c[name]["sim"]
            assert real > 0 and sim > 0
            assert c[name]["rel_error"] == pytest.approx((sim - real) / real)
        assert set(c["within_targets"]) == {"e2e_mean", "e2e_p99", "recomputed", "steps"}
    assert sorted(report["ranking_real"]) == sorted(report["ranking_sim"]) == ["lamps", "vllm"]
    assert isinstance(report["ranking_agrees"], bool)
    # the preset was fitted to the served engine's own steps, with that engine's shape
    preset = load_preset(config_file=out / "preset.json")
    # the engine's blocks, less vLLM's null block (as the in-process profile counts them)
    assert preset.num_gpu_blocks == 2 * 2**20 // (32 * preset.kv_bytes_per_token) - 1
    assert preset.block_size == 32 and preset.max_num_seqs == 8
    measured = read_measured(out / "preset.json")
    assert measured is not None and measured.how == "served" and measured.reserved_cpus == 1
    assert (out / "steps-profile.jsonl").stat().st_size > 0
    assert "ranking by mean E2E" in (out / "report.md").read_text()


def test_validate_refuses_a_preset_measured_on_another_engine(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"base": "h100-llama3-8b",
                                 "measured": {"how": "in-process", "block_size": 16}}))  # fmt: skip
    rc = main(["validate", "--model", str(tiny_model), "--synthetic", "4", "--preset-file",
               str(stale), "--out", str(tmp_path / "v")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "measured on another engine" in err
    assert "how: measured in-process, this run served" in err and "block_size: measured 16" in err
    assert not (tmp_path / "v" / "report.json").exists()
