"""The served engine's step log (adapters/vllm/steplog.py) and the fit of a preset to it
(``lamps-agent profile --from-step-log``), without an engine: steps drawn from a known cost model."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.vllm.steplog import StepLog, StepRecord, StepShape, describe, read_step_log
from adapters.vllm.tools.profile import (
    fit_cost_model,
    fit_quality,
    held_back,
    predict_ms,
    samples_from_step_log,
)
from lamps_agent.cli.main import main
from lamps_agent.cost_model import CostModel
from lamps_agent.errors import ConfigError
from lamps_agent.presets import MeasuredEngine, check_measured, load_preset, read_measured

TRUE = CostModel(
    base_ms=6.0,
    prefill_ms_per_token=0.03,
    decode_ms_per_seq=0.4,
    kv_ms_per_token=0.002,
    prefill_attn_ms_per_mtok2=8.0,
    prefill_request_ms=2.5,
)


def test_a_step_is_described_as_the_cost_model_sees_it() -> None:
    # After schedule(): num_computed_tokens already includes the scheduled tokens.
    requests = {
        # chunk 200 of a 500-token prompt
        "p": SimpleNamespace(num_computed_tokens=300, num_prompt_tokens=500, num_tokens=500),
        # a decode: 40 prompt + 41 sampled tokens, all but the last with KV
        "d": SimpleNamespace(num_computed_tokens=81, num_prompt_tokens=40, num_tokens=81),
        # preempted after 41 sampled tokens, its prompt found in the prefix cache: the 33 output
        # tokens it recomputes are prefill (vLLM's prefill boundary), not a decode
        "r": SimpleNamespace(num_computed_tokens=73, num_prompt_tokens=40, num_tokens=81),
    }
    shape = describe({"p": 200, "d": 1, "r": 33, "gone": 5}, requests)
    assert shape == StepShape(
        prefill_tokens=200 + 33, decode_seqs=1, resident_kv_tokens=100 + 80 + 40,
        attn_products=200 * (100 + 100) + 33 * (40 + 16.5), prefill_seqs=2,
    )  # fmt: skip


def _steps(n: int, seed: int = 0) -> list[StepRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prefill = rng.choice((0, 0, 64, 256, 1024))
        prefills = rng.randint(1, 3) if prefill else 0  # the prefill tokens split among them
        decodes = rng.randint(0 if prefill else 1, 16)
        resident = rng.randint(0, 6000)
        attn = prefill * (rng.randint(0, 2000) + prefill / 2)
        shape = StepShape(prefill, decodes, resident, attn, prefills)
        ms = 1000 * TRUE.iteration_time(prefill, decodes, resident, attn, prefills)
        out.append(StepRecord(step=i + 1, t=float(i), ms=ms * rng.uniform(0.97, 1.03), shape=shape))
    return out


def test_the_log_round_trips_and_a_bad_line_names_its_place(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    log = StepLog(str(path))
    requests = {"a": SimpleNamespace(num_computed_tokens=20, num_prompt_tokens=20, num_tokens=20)}
    for _ in range(3):
        log.begin()
        log.scheduled(SimpleNamespace(num_scheduled_tokens={"a": 20}, preempted_req_ids={"x"}),
                      requests, used_blocks=7)  # fmt: skip
        log.end()
    log.begin()
    log.scheduled(SimpleNamespace(num_scheduled_tokens={}), requests, used_blocks=7)
    log.end()  # an empty step is not logged
    log.close()
    records = read_step_log(path)
    assert [r.step for r in records] == [1, 2, 3]
    assert records[0].shape.prefill_tokens == 20 and records[0].preempted == ["x"]
    assert records[0].used_blocks == 7 and records[0].ms >= 0
    path.write_text(path.read_text() + json.dumps({"step": 4}) + "\n")
    with pytest.raises(ValueError, match=r"steps.jsonl:4: not a step record"):
        read_step_log(path)


def test_a_fit_on_served_steps_predicts_the_step_shapes_it_never_saw() -> None:
    samples = samples_from_step_log(_steps(600))
    fit, back = held_back(samples)
    assert fit and back
    seen = {s.shape_key for s in fit}
    assert not seen & {s.shape_key for s in back}
    cost = fit_cost_model(fit)
    quality = fit_quality(cost, back)
    assert quality.r2 > 0.95 and quality.median_rel_error < 0.05
    worst = max(abs(predict_ms(cost, s) - predict_ms(TRUE, s)) / predict_ms(TRUE, s) for s in back)
    assert worst < 0.10
    assert cost.prefill_request_ms == pytest.approx(TRUE.prefill_request_ms, rel=0.25)


def test_the_fit_weighs_a_shape_by_how_often_it_was_seen() -> None:
    # 200 steady decode steps and one wild outlier shape: the outlier must not drag the decode
    # cost, which most of the run's time is made of.
    steady = [
        StepRecord(step=i, t=0.0, ms=1000 * TRUE.iteration_time(0, d, r), shape=StepShape(0, d, r))
        for i, (d, r) in enumerate(
            (d, r) for d in (1, 2, 4, 8) for r in (500, 1500, 3000) for _ in range(20)
        )
    ]
    prefills = [
        StepRecord(step=i, t=0.0, ms=1000 * TRUE.iteration_time(p, 1, 500, p * p / 2, 1),
                   shape=StepShape(p, 1, 500, p * p / 2, 1))
        for i, p in enumerate((64, 128, 256, 512, 1024, 2048))
    ]  # fmt: skip
    odd = StepRecord(step=0, t=0.0, ms=40.0, shape=StepShape(0, 16, 500))  # one slow step
    cost = fit_cost_model(samples_from_step_log([*steady, *prefills, odd]))
    for d in (1, 4, 8):
        assert 1000 * cost.iteration_time(0, d, 1500) == pytest.approx(
            1000 * TRUE.iteration_time(0, d, 1500), rel=0.05
        )


def test_an_older_log_without_prefill_seqs_derives_them(tmp_path: Path) -> None:
    record = StepRecord(step=1, t=0.0, ms=5.0, shape=StepShape(300, 1, 100, 9e4, 2),
                        scheduled={"a": 200, "b": 100, "c": 1})  # fmt: skip
    data = json.loads(record.to_json())
    del data["prefill_seqs"]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(data) + "\n")
    assert read_step_log(path)[0].shape.prefill_seqs == 2


def test_profile_from_a_step_log_writes_a_preset_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "steps-noop.jsonl"
    log.write_text("".join(r.to_json() + "\n" for r in _steps(400, seed=1)))
    out = tmp_path / "served.toml"
    assert main(["profile", "--from-step-log", str(log), "--base", "a100-gptj6b",
                 "--out", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "held back: R² " in text and "400 served steps" in text
    preset = load_preset(config_file=out)
    assert preset.cost.prefill_ms_per_token == pytest.approx(0.03, rel=0.1)
    assert preset.num_gpu_blocks == load_preset("a100-gptj6b").num_gpu_blocks
    # without the engine's record beside the log, the preset knows only that it was served
    assert read_measured(out) == MeasuredEngine(how="served") and "no engine.json" in text

    # bench --engine compare writes engine.json beside its step logs: the preset carries it
    engine = MeasuredEngine(how="served", block_size=32, kv_cache_bytes=3_000_000, reserved_cpus=1)
    (tmp_path / "engine.json").write_text(json.dumps(engine.fields()))
    assert main(["profile", "--from-step-log", str(log), "--base", "a100-gptj6b",
                 "--out", str(out)]) == 0  # fmt: skip
    assert read_measured(out) == engine
    with pytest.raises(ConfigError, match="block_size: measured 32, this run 16"):
        check_measured(out, dataclasses.replace(engine, block_size=16))


def test_profile_without_a_model_or_a_step_log_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "--out", str(tmp_path / "x.toml")]) == 2
    assert "--model is required" in capsys.readouterr().err
