"""Issue 23: hints are untrusted.  The adversarial bench (liars, tenants, a burst) and the
calibration that discounts a source's claims by what its turns then did."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
from rich.console import Console

from lamps_agent.bench.adversary import Adversary, LieKind, LyingPredictor, cast, tell
from lamps_agent.bench.adversary_table import AdversaryRow, Cell, adversary_rows, adversary_table
from lamps_agent.bench.bound import ContentionFreeBound
from lamps_agent.bench.runner import BenchConfig, RunSpec, run_point
from lamps_agent.predictors import (
    NoisyPredictor,
    OraclePredictor,
    Prediction,
    PredictionQuery,
    Predictor,
)
from lamps_agent.predictors.base import Outcome
from lamps_agent.predictors.calibrated import CalibratedPredictor
from lamps_agent.presets import load_preset
from lamps_agent.program import Program, Segment
from lamps_agent.workloads import generate_programs
from lamps_agent.workloads.arrivals import poisson_workload


def _program(pid: str, turns: int = 4) -> Program:
    segs, prompt = [], 100
    for i in range(turns):
        last = i == turns - 1
        seg = Segment(
            prompt_tokens=prompt,
            output_tokens=300,
            tool=None if last else "search",
            tool_duration=0.0 if last else 4.0,
            returned_tokens=0 if last else 50,
        )
        segs.append(seg)
        prompt = seg.context_at_pause + seg.returned_tokens
    return Program(program_id=pid, agent="a", segments=tuple(segs))


def _query(program: Program, step: int, tenant: str | None) -> PredictionQuery:
    seg = program.segments[step]
    return PredictionQuery(
        agent=program.agent,
        step=step,
        tool=seg.tool,
        prompt_tokens=seg.prompt_tokens,
        program_id=program.program_id,
        tenant=tenant,
        truth=seg,
    )


def _short_first_turn() -> Program:
    """An honest program whose first turn (200 tokens, a 3 s tool) is below the medians of
    :func:`_program`'s turns (300 tokens, 4 s) and within their range."""
    first = Segment(
        prompt_tokens=100, output_tokens=200, tool="search", tool_duration=3.0, returned_tokens=50
    )
    last = Segment(prompt_tokens=350, output_tokens=300, tool=None, tool_duration=0.0)
    return Program(program_id="short", agent="a", segments=(first, last))


def _outcome(seg: Segment) -> Outcome:
    return Outcome(
        output_tokens=seg.output_tokens,
        tool=seg.tool,
        tool_duration=seg.tool_duration,
        returned_tokens=seg.returned_tokens,
    )


def _play(predictor: CalibratedPredictor, program: Program, tenant: str | None) -> list[Prediction]:
    out = []
    for step, seg in enumerate(program.segments):
        query = _query(program, step, tenant)
        out.append(predictor.predict(query))
        predictor.observe(query, _outcome(seg))
    return out


class _Spy(Predictor):
    """Records what the wrapped predictor claimed."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.claims: list[Prediction] = []

    def predict(self, query: PredictionQuery) -> Prediction:
        self.claims.append(self.inner.predict(query))
        return self.claims[-1]


def test_an_honest_tenants_predictions_are_unchanged() -> None:
    """Beside a lying tenant, the oracle's (exact) and a noisy predictor's (within the
    tolerance) predictions pass untouched: honest clients keep full weight."""
    for inner in (OraclePredictor(), NoisyPredictor(error=0.2, seed=3)):
        liars = {f"liar{i}" for i in range(20)}
        spy = _Spy(LyingPredictor(inner, liars=liars, kind="short"))
        calibrated = CalibratedPredictor(spy)
        for i in range(20):
            _play(calibrated, _program(f"liar{i}"), "bad")
        assert calibrated.discounted > 0
        for i in range(10):
            got = _play(calibrated, _program(f"honest{i}"), "good")
            assert got == spy.claims[-4:]
        assert calibrated.trusted(_query(_program("new"), 0, "good"))
        assert not calibrated.trusted(_query(_program("new"), 0, "bad"))


@pytest.mark.parametrize("kind", ["short", "hog"])
def test_a_lying_tenant_is_ranked_by_what_it_does(kind: LieKind) -> None:
    liars = {f"p{i}" for i in range(31)}
    calibrated = CalibratedPredictor(LyingPredictor(OraclePredictor(), liars=liars, kind=kind))
    first = _play(calibrated, _program("p0"), "bad")
    assert first[0] == tell(kind, OraclePredictor().predict(_query(_program("p0"), 0, None)))
    assert first[1].output_tokens == pytest.approx(300, rel=0.01)  # its own record, one turn on
    for i in range(1, 30):
        _play(calibrated, _program(f"p{i}"), "bad")
    # a new program of the tenant: judged by the tenant's record from its first turn
    new = calibrated.predict(_query(_program("p30"), 0, "bad"))
    assert new.output_tokens == pytest.approx(300, rel=0.01)
    if kind == "short":
        assert new.tool_duration == pytest.approx(4.0)  # the tool's observed durations, not 0 s


def test_a_false_final_claim_becomes_a_tool_call() -> None:
    liars = {f"p{i}" for i in range(10)}
    calibrated = CalibratedPredictor(LyingPredictor(OraclePredictor(), liars=liars, kind="final"))
    turns = _play(calibrated, _program("p0"), "bad")
    assert turns[0].tool is None  # believed once
    assert turns[1].tool == "search" and turns[1].tool_duration == pytest.approx(4.0)
    assert turns[1].returned_tokens == pytest.approx(50)


def test_cast_is_deterministic_and_the_same_for_every_lie() -> None:
    programs = generate_programs(20, seed=1)
    arrivals = poisson_workload(programs, qps=2.0, seed=0, num_programs=200)
    adversary = Adversary(liar_fraction=0.2, tenants=4, burst_tenant=0, burst_factor=10.0)
    casts = [cast(adversary, programs, arrivals, qps=2.0, seed=0, lie=k) for k in ("none", "hog")]
    again = cast(adversary, programs, arrivals, qps=2.0, seed=0, lie="hog")
    assert casts[0].liars == casts[1].liars == again.liars
    assert [a.time for a in casts[0].arrivals] == [a.time for a in again.arrivals]
    assert 0.1 < len(casts[0].liars) / len(casts[0].arrivals) < 0.3
    tenants = [a.program.tenant for a in casts[0].arrivals]
    assert set(tenants) == {"t0", "t1", "t2", "t3"}
    assert tenants.count("t0") > 2 * tenants.count("t1")  # the burst
    spoofed = cast(adversary, programs, arrivals, qps=2.0, seed=0, lie="spoof")
    liar_agents = {
        a.program.agent for a in spoofed.arrivals if a.program.program_id in spoofed.liars
    }
    assert len(liar_agents) <= 2


def test_the_adversarial_bench_reports_liars_honest_and_tenants() -> None:
    config = BenchConfig(
        programs=generate_programs(12, seed=0),
        trace_name="synthetic-12",
        preset=load_preset("a100-gptj6b", overrides={"gpu_kv_gb": 4}),
        qps=[2.0],
        policies=["lamps-aging"],
        num_programs=60,
        adversary=Adversary(liar_fraction=0.3, tenants=2),
        lies=("none", "short"),
        calibrate=True,
    )
    bound = ContentionFreeBound(preset=config.preset, policies=config.policies)
    points = [run_point(config, spec, bound) for spec in config.specs()]
    assert [p.spec.lie for p in points] == ["none", "short"]
    assert points[1].summary.predictor == "oracle lie:short"
    (none, short) = adversary_rows(points)
    assert set(none.cells) == {"liars", "honest", "tenant t0", "tenant t1"}
    assert none.cells["liars"].mean_ratio == 1.0
    assert not math.isnan(short.cells["honest"].mean_ratio)
    again = run_point(
        config,
        RunSpec(policy="lamps-aging", predictor="oracle", qps=2.0, seed=0, lie="short"),
        bound,
    )
    assert again.summary == points[1].summary  # the same seed, the same metrics


def test_the_adversarial_table_fits_80_columns_whatever_the_tenants() -> None:
    """Ten tenants made the console table 28 columns wide, every cell cut to ``×0.…`` in a log;
    by default it shows the ratios and the tenants' P99 as a range with the worst tenant."""
    cell = Cell(mean=400.0, p99=1300.0, mean_ratio=1.0, p99_ratio=1.0, count=3)
    tenants = {f"tenant t{i}": dataclasses.replace(cell, p99_ratio=1 + i / 100) for i in range(10)}
    rows = [
        AdversaryRow(policy="lamps-aging", predictor="oracle", qps=5.4, lie=lie,
                     cells={"liars": dataclasses.replace(cell, mean_ratio=0.957),
                            "honest": cell, **tenants})
        for lie in ("none", "short", "final", "hog")
    ]  # fmt: skip
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(adversary_table(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert "×0.957" in text and "×1.000–1.090 (t9)" in text
    wide = Console(width=1000, record=True, file=io.StringIO())
    wide.print(adversary_table(rows, wide=True))
    assert "1300.0 ×1.090" in wide.export_text()  # every tenant's own column


def test_a_lying_tenant_lies_in_every_program() -> None:
    programs = generate_programs(20, seed=1)
    arrivals = poisson_workload(programs, qps=2.0, seed=0, num_programs=200)
    adversary = Adversary(tenants=10, liar_tenants=1)
    roles = cast(adversary, programs, arrivals, qps=2.0, seed=0, lie="short")
    lying = {a.program.program_id for a in roles.arrivals if a.program.tenant == "t0"}
    assert lying and roles.liars == lying


def test_a_liars_first_turn_among_honest_programs_is_checked_for_plausibility() -> None:
    """One lying session in an honest tenant: its first claims (1 token, a 0 s tool) are far
    outside what the agent's turns with that tool do, so the population's medians replace them;
    an honest first turn within the range passes."""
    calibrated = CalibratedPredictor(
        LyingPredictor(OraclePredictor(), liars={"liar"}, kind="short")
    )
    for i in range(12):
        _play(calibrated, _program(f"h{i}"), "good")
    first = calibrated.predict(_query(_program("liar"), 0, "good"))
    assert first.output_tokens == pytest.approx(300) and first.tool_duration == pytest.approx(4.0)
    honest = calibrated.predict(_query(_program("h99"), 0, "good"))
    assert honest == OraclePredictor().predict(_query(_program("h99"), 0, "good"))


def test_a_tenant_caught_lying_loses_the_benefit_of_the_doubt_on_first_turns() -> None:
    """Liars among a tenant's honest sessions: the tenant's median record stays clean, but once
    a session is caught, a new session's first claim below its population's median (a 1-token
    output, a 0 s tool, within the population's range) is ranked as the median.  A tenant never
    caught keeps its claims, and an honest claim above the median passes in either."""
    calibrated = CalibratedPredictor(
        LyingPredictor(OraclePredictor(), liars={"liar0", "liar1"}, kind="short")
    )
    short = _short_first_turn()
    for i in range(12):
        for tenant in ("mixed", "clean"):
            _play(calibrated, _program(f"h{i}"), tenant)
    first_short = _query(short, 0, "mixed")
    assert calibrated.predict(first_short).output_tokens == pytest.approx(200)  # not doubted yet
    _play(calibrated, _program("liar0"), "mixed")  # caught from its second turn
    assert calibrated.trusted(_query(_program("new"), 0, "mixed"))  # the median record: clean
    doubted = calibrated.predict(_query(short, 0, "mixed"))
    assert doubted.output_tokens == pytest.approx(300)
    assert doubted.tool_duration == pytest.approx(4.0)
    liar = calibrated.predict(_query(_program("liar1"), 0, "mixed"))
    assert liar.output_tokens == pytest.approx(300) and liar.tool_duration == pytest.approx(4.0)
    clean = calibrated.predict(_query(short, 0, "clean"))
    assert clean == OraclePredictor().predict(_query(short, 0, "clean"))
    assert calibrated.discounted_by["mixed"] >= 2 and "clean" not in calibrated.discounted_by


def test_a_tenant_caught_overstating_keeps_its_first_claims() -> None:
    """A hog (claims 100k tokens) is ranked by what it does from its second turn; its tenant's
    honest first claims below the median stand: overstating buys nothing on a first turn."""
    calibrated = CalibratedPredictor(LyingPredictor(OraclePredictor(), liars={"hog"}, kind="hog"))
    for i in range(12):
        _play(calibrated, _program(f"h{i}"), "t")
    _play(calibrated, _program("hog"), "t")
    assert calibrated.discounted_by["t"] > 0  # the hog, from its second turn
    short = _short_first_turn()
    query = _query(short, 0, "t")
    assert calibrated.predict(query) == OraclePredictor().predict(query)
