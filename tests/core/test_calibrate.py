"""The profile's fit and preset file, and validate's report, without an engine."""

import dataclasses
import math
import random

import pytest

from adapters.vllm.tools.profile import (
    FEATURES,
    EngineFacts,
    StepSample,
    fit_cost_model,
    fit_quality,
    predict_ms,
    preset_fields,
    write_preset,
)
from adapters.vllm.tools.validate import Metric, PolicyComparison, ValidationReport, report_lines
from lamps_agent.cost_model import CostModel
from lamps_agent.presets import MeasuredEngine, load_preset, read_measured

TRUE = CostModel(
    base_ms=4.0,
    prefill_ms_per_token=0.02,
    decode_ms_per_seq=0.3,
    kv_ms_per_token=0.001,
    prefill_attn_ms_per_mtok2=5.0,
    prefill_request_ms=1.5,
)


def _samples(noise: float, seed: int = 0) -> list[StepSample]:
    rng = random.Random(seed)
    out = []
    for point, (p, b, k, c) in enumerate(
        (p, b, k, c)
        for p in (0, 128, 1024)
        for b in (1, 8, 16)
        for k in (64, 1024)
        for c in (0, 2048)
    ):
        attn = p * (c + p / 2)
        s = StepSample(point=point, prefill_tokens=p, decode_seqs=b, prefill_seqs=int(p > 0),
                       resident_kv_tokens=b * k + c, attn_products=attn, ms=1.0)  # fmt: skip
        ms = predict_ms(TRUE, s) * (1 + rng.gauss(0, noise))
        out.append(dataclasses.replace(s, ms=ms))
    return out


def test_fit_recovers_the_constants_that_made_the_times() -> None:
    fitted = fit_cost_model(_samples(noise=0.0))
    for name in ("base_ms", "prefill_ms_per_token", "decode_ms_per_seq", "kv_ms_per_token",
                 "prefill_attn_ms_per_mtok2", "prefill_request_ms"):  # fmt: skip
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    quality = fit_quality(fitted, _samples(noise=0.0))
    assert quality.r2 == pytest.approx(1.0) and quality.max_rel_error < 1e-6


def test_fit_is_non_negative_and_reports_its_error_under_noise() -> None:
    samples = _samples(noise=0.1, seed=3)
    fitted = fit_cost_model(samples)
    assert all(v >= 0 for v in (fitted.base_ms, fitted.kv_ms_per_token,
                                 fitted.prefill_attn_ms_per_mtok2))  # fmt: skip
    quality = fit_quality(fitted, samples)
    assert 0.9 < quality.r2 < 1.0 and 0.0 < quality.max_rel_error < 0.5


def test_a_column_that_would_go_negative_is_dropped() -> None:
    # Times that fall with the KV term: the fit must clamp it to 0, not go negative.
    samples = [
        StepSample(
            point=i,
            prefill_tokens=0,
            decode_seqs=1,
            resident_kv_tokens=k,
            attn_products=0.0,
            ms=5.0 - k / 1000,
        )
        for i, k in enumerate((0, 500, 1000, 1500, 2000, 2500))
    ]
    assert fit_cost_model(samples).kv_ms_per_token == 0.0
    with pytest.raises(ValueError, match=f"at least {len(FEATURES)} step shapes"):
        fit_cost_model(samples[:2])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_the_preset_file_loads_with_the_engine_and_the_fit(tmp_path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    facts = EngineFacts(num_gpu_blocks=180, block_size=32, kv_bytes_per_token=512, n_layers=2,
                        n_kv_heads=1, head_dim=64, dtype_bytes=2, token_budget=2048,
                        max_num_seqs=16, model="/tmp/tiny-llama")  # fmt: skip
    fitted = fit_cost_model(_samples(noise=0.0))
    measured = MeasuredEngine(how="in-process", block_size=32, max_num_seqs=16)
    fields = preset_fields(facts, fitted, fit_quality(fitted, _samples(noise=0.0)),
                           base="h100-llama3-8b", host_swap_gb=4.0, measured=measured)  # fmt: skip
    path = tmp_path / f"fitted{suffix}"
    write_preset(path, fields)
    preset = load_preset(config_file=path)
    assert preset.num_gpu_blocks == 180 and preset.gpu_kv_tokens == 180 * 32
    assert preset.kv_bytes_per_token == 512 and preset.token_budget == 2048
    assert preset.max_num_seqs == 16 and preset.cost.decode_ms_per_seq == pytest.approx(0.3)
    assert "fitted by lamps-agent profile" in preset.description and "CPU" in preset.description
    assert read_measured(path) == measured  # the engine it was measured on goes with it


def _comparison(policy: str, real: float, sim: float) -> PolicyComparison:
    return PolicyComparison(
        policy=policy,
        e2e_mean=Metric(real=real, sim=sim),
        e2e_p99=Metric(real=3 * real, sim=3 * sim),
        recomputed=Metric(real=1000.0, sim=0.0),
        steps=Metric.over_rounds([100.0, 96.0, 110.0], 102.0),
        preemptions=Metric(real=2.0, sim=2.0),
    )


def _over_rounds(policy: str, reals: list[float], sim: float) -> PolicyComparison:
    return dataclasses.replace(
        _comparison(policy, 0.0, sim), e2e_mean=Metric.over_rounds(reals, sim)
    )


def test_the_ranking_asks_only_for_the_order_the_engine_can_tell_apart() -> None:
    """Policies whose mean E2E ranges over the rounds overlap are no difference on the engine:
    the simulator may order them either way (the served longctx:coding validation: 1.88–1.92 s
    for all three, the simulator's 1.90 s each).  Ranges apart must be ordered alike."""
    tied = ValidationReport(
        workload="w", programs=10, qps=2.0, unloaded_p99=None,
        comparisons=(_over_rounds("vllm", [1.88, 1.90, 1.91], 1.901),
                     _over_rounds("lamps", [1.90, 1.91, 1.92], 1.899)),
    )  # fmt: skip
    assert tied.ranking_real == ["vllm", "lamps"] and tied.ranking_sim == ["lamps", "vllm"]
    assert tied.ranking_agrees and tied.ranking_real_text() == "vllm ≈ lamps"
    apart = ValidationReport(
        workload="w", programs=10, qps=2.0, unloaded_p99=None,
        comparisons=(_over_rounds("vllm", [2.8, 3.0, 3.5], 2.0),
                     _over_rounds("lamps", [2.1, 2.4, 2.6], 2.1),
                     _over_rounds("program", [2.5, 2.9, 3.0], 1.9)),
    )  # fmt: skip
    # lamps < vllm beyond the spread, and the simulator has it the other way round
    assert not apart.ranking_agrees and apart.ranking_real_text() == "lamps ≈ program ≈ vllm"
    fixed = dataclasses.replace(
        apart, comparisons=(*apart.comparisons[:1], _over_rounds("lamps", [2.1, 2.4, 2.6], 1.8),
                            *apart.comparisons[2:]),
    )  # fmt: skip
    assert fixed.ranking_agrees
    assert "(agrees; ≈" in "\n".join(report_lines(fixed))


def test_report_errors_come_from_both_sides_and_rankings_are_compared() -> None:
    report = ValidationReport(
        workload="w", programs=10, qps=2.0, unloaded_p99=2.0,
        comparisons=(_comparison("vllm", 10.0, 10.5), _comparison("lamps", 8.0, 11.0)),
    )  # fmt: skip
    vllm = report.comparisons[0]
    assert vllm.e2e_mean.rel_error == pytest.approx(0.05)
    assert vllm.within_targets() == {
        "e2e_mean": True, "e2e_p99": True, "recomputed": False, "steps": True
    }  # fmt: skip
    assert report.ranking_real == ["lamps", "vllm"] and report.ranking_sim == ["vllm", "lamps"]
    assert not report.ranking_agrees and report.load_factor == pytest.approx(15.0)
    text = "\n".join(report_lines(report))
    assert "DIFFERS" in text and "+37.5%" in text and "missed: vllm recomputed" in text
    assert math.isnan(Metric(real=0.0, sim=1.0).rel_error)
    assert report.to_dict()["comparisons"][1]["e2e_mean"]["rel_error"] == pytest.approx(0.375)
    # over rounds: the median against the simulator, the range (the engine's spread) beside it
    steps = vllm.steps
    assert steps.real == 100.0 and steps.rel_error == pytest.approx(0.02)
    assert steps.real_spread == pytest.approx(0.14) and "| 100 (96–110) | 102 | +2.0% |" in text
