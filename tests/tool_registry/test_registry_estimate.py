"""Histogram percentiles, associative aggregates, and the estimate's blend of hint and data."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamps_agent.predictors.base import DEFAULT_TOOL_DURATION
from tool_registry.aggregate import Aggregate, aggregate_batch
from tool_registry.estimator import PRIOR_WEIGHT, estimate_from, has_drifted
from tool_registry.histogram import NUM_BUCKETS, bucket_bounds, bucket_of, quantiles
from tool_registry.types import CallRow

durations = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(durations)
def test_bucket_contains_its_value(value: float) -> None:
    index = bucket_of(value)
    assert 0 <= index < NUM_BUCKETS
    lower, upper = bucket_bounds(index)
    assert lower * (1 - 1e-9) <= value or index == 0
    assert value < upper * (1 + 1e-9) or index == NUM_BUCKETS - 1


def test_quantiles_are_within_a_bucket_of_the_truth() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(0.0, 1.5) for _ in range(20_000))
    agg = Aggregate()
    for value in values:
        agg.add(value)
    got = quantiles(agg.buckets, (0.5, 0.9, 0.99), lo=agg.min, hi=agg.max)
    for q, estimate in zip((0.5, 0.9, 0.99), got, strict=True):
        truth = values[int(q * len(values))]
        assert abs(estimate / truth - 1) < 0.13  # one bucket is ~12% wide


def test_constant_durations_give_exact_percentiles() -> None:
    agg = Aggregate()
    for _ in range(10):
        agg.add(0.25)
    assert quantiles(agg.buckets, (0.5, 0.99), lo=agg.min, hi=agg.max) == (0.25, 0.25)


@settings(max_examples=50)
@given(st.lists(durations, min_size=1, max_size=40), st.integers(min_value=0, max_value=40))
def test_merging_batches_equals_adding_one_by_one(values: list[float], cut: int) -> None:
    whole, first, second = Aggregate(), Aggregate(), Aggregate()
    for i, value in enumerate(values):
        whole.add(value)
        (first if i < cut else second).add(value)
    first.merge(second)
    assert first.count == whole.count and first.buckets == whole.buckets
    assert math.isclose(first.total, whole.total, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(first.ewma, whole.ewma, rel_tol=1e-9, abs_tol=1e-9)
    assert (first.min, first.max) == (whole.min, whole.max)


def test_unknown_tool_gets_the_documented_default() -> None:
    est = estimate_from(None, None)
    assert est.mean == est.p50 == est.p99 == DEFAULT_TOOL_DURATION
    assert (est.count, est.confidence) == (0, 0.0)


def test_hint_alone_is_the_estimate_with_zero_confidence() -> None:
    est = estimate_from(None, 2.0)
    assert (est.mean, est.p90, est.count, est.confidence) == (2.0, 2.0, 0, 0.0)


def test_hint_is_a_prior_worth_k_observations() -> None:
    agg = Aggregate()
    for _ in range(5):
        agg.add(4.0)
    est = estimate_from(agg, 2.0)
    weight = 5 / (5 + PRIOR_WEIGHT)
    assert est.mean == pytest.approx(weight * 4.0 + (1 - weight) * 2.0)
    assert est.count == 5 and 0 < est.confidence < 1
    for _ in range(10_000):
        agg.add(4.0)
    assert estimate_from(agg, 2.0).mean == pytest.approx(4.0, rel=1e-3)
    assert estimate_from(agg, 2.0).confidence > 0.99


def test_without_a_hint_observations_stand_alone() -> None:
    agg = Aggregate()
    agg.add(0.001)
    assert estimate_from(agg, None).mean == pytest.approx(0.001)


def test_drift_moves_the_estimate_to_the_recent_level() -> None:
    rng = random.Random(3)
    agg = Aggregate()
    for _ in range(1000):
        agg.add(rng.uniform(0.9, 1.1))
    assert not has_drifted(agg)
    assert estimate_from(agg, None).mean == pytest.approx(1.0, rel=0.02)
    for _ in range(60):
        agg.add(rng.uniform(9.0, 11.0))
    assert has_drifted(agg)
    est = estimate_from(agg, None)
    assert est.mean == pytest.approx(10.0, rel=0.05)
    assert est.p50 > 5.0


@settings(max_examples=50)
@given(st.lists(st.tuples(st.sampled_from("abc"), durations, st.booleans()), min_size=1))
def test_batch_aggregates_equal_one_by_one(calls: list[tuple[str, float, bool]]) -> None:
    rows: list[CallRow] = [
        (f"id{i}", tool, None, 100.0, duration, "error" if error else "ok", None, None, None)
        for i, (tool, duration, error) in enumerate(calls)
    ]
    batch = aggregate_batch(rows)
    for tool in {tool for tool, _, _ in calls}:
        expected = Aggregate()
        for _, name, _, _, duration, status, *_ in rows:
            if name == tool:
                expected.add(duration, error=status == "error", at=100.0 + duration)
        got = batch[tool]
        assert (got.count, got.error_count, got.buckets) == (
            expected.count,
            expected.error_count,
            expected.buckets,
        )
        assert (got.min, got.max, got.last_at) == (expected.min, expected.max, expected.last_at)
        for field in ("total", "total_sq", "ewma_num", "ewma_den"):
            assert math.isclose(
                getattr(got, field), getattr(expected, field), rel_tol=1e-9, abs_tol=1e-12
            )
