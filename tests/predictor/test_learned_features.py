"""Records, bins, features, data sources and splits: no torch needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from learned_synth import synthetic_records

from lamps_agent.predictors.learned.data import (
    conversation_group,
    data_hash,
    fold_groups,
    jsonl_records,
    split_by_group,
    trace_records,
)
from lamps_agent.predictors.learned.features import (
    N_BINS,
    N_TEXT_STATS,
    FeatureSpec,
    bin_of,
    text_stats,
    text_window,
)
from lamps_agent.workloads import load_trace


def test_bins_follow_lamps() -> None:
    assert (bin_of(0), bin_of(9), bin_of(10), bin_of(499), bin_of(5000)) == (0, 0, 1, 49, 49)
    assert bin_of(-3) == 0 and N_BINS == 50


def test_text_window_keeps_the_tail_and_rejects_non_text() -> None:
    assert text_window("a" * 10 + "END", chars=5) == "aaEND"
    for bad in (None, "", "   \n", 42, b"bytes", ["x"]):
        assert text_window(bad) is None
    assert not text_stats(None).any() and text_stats("x = {1}").shape == (N_TEXT_STATS,)


def test_feature_vector_maps_odd_values_to_neutral() -> None:
    spec = FeatureSpec.from_records(synthetic_records(2))
    ok = spec.vector(agent="writer", step=1, tool="search", prompt_tokens=100, has_text=True)
    odd = spec.vector(agent=3, step=-1, tool=object(), prompt_tokens=math.nan, has_text=False)
    huge = spec.vector(agent="?", step=10**9, tool=None, prompt_tokens=10**12, has_text=False)
    for v in (ok, odd, huge):
        assert v.shape == (spec.dim,) and np.isfinite(v).all()
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_jsonl_records_parse_and_name_the_bad_line(tmp_path: Path) -> None:
    good = {"agent": "a", "step": 0, "tool": None, "prompt_tokens": 5, "output_tokens": 7}
    path = tmp_path / "turns.jsonl"
    path.write_text("# comment\n" + json.dumps({**good, "conversation": "c1"}) + "\n\n")
    [rec] = jsonl_records(path)
    assert (rec.tool, rec.output_tokens, rec.group, rec.prompt_text) == (None, 7, "c1", None)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "output_tokens": 0}) + "\n")
    with pytest.raises(ValueError, match=r"turns.jsonl:2"):
        jsonl_records(path)


def test_split_never_separates_a_conversation() -> None:
    records = synthetic_records(20)
    train, test = split_by_group(records, test_fraction=0.25, seed=3)
    assert {r.group for r in train}.isdisjoint({r.group for r in test})
    assert len({r.group for r in test}) == 5
    assert split_by_group(records, test_fraction=0.25, seed=3) == (train, test)
    assert set(fold_groups(records, folds=5).values()) == set(range(5))
    assert data_hash(records) == data_hash(list(records)) != data_hash(records[1:])


def test_trace_records_match_the_simulator_and_group_copies() -> None:
    assert conversation_group("17_2") == conversation_group("17") == "17"
    records = trace_records("multi-api")
    trace = load_trace("multi-api")
    assert len(records) == sum(len(p.segments) for p in trace.programs)
    text = [r for r in records if r.prompt_text is not None]
    assert len(text) == 1190
    assert len({r.group for r in text}) == 65  # 195 conversations = 65 x (chat, TTS, image)
