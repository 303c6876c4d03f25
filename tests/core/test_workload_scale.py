"""``--token-scale``: a long-context workload shrunk to a small engine keeps its shape, stays valid,
and reaches the simulator and the engine replay as the same programs."""

from __future__ import annotations

import pytest

from lamps_agent.cli import bench as bench_cli
from lamps_agent.cli.main import build_parser
from lamps_agent.program import Program, Segment
from lamps_agent.workloads.longctx import generate_longctx, peak_context
from lamps_agent.workloads.scale import fitting, parse_scale, scale_tokens


def test_scaled_contexts_follow_the_originals_and_programs_stay_valid() -> None:
    programs = generate_longctx(200, kinds="coding", seed=4)
    scaled = scale_tokens(programs, 1 / 32)
    for orig, new in zip(programs, scaled, strict=True):
        # Program's own checks (each prompt = previous context + return) ran on construction.
        assert len(new.segments) == len(orig.segments)
        assert [s.tool for s in new.segments] == [s.tool for s in orig.segments]
        assert [s.tool_duration for s in new.segments] == [s.tool_duration for s in orig.segments]
        raised = sum(1 for s in orig.segments if s.output_tokens / 32 < 0.5)
        for o, n in zip(orig.segments, new.segments, strict=True):
            assert abs(n.prompt_tokens - o.prompt_tokens / 32) <= 1 + raised
        assert abs(peak_context(new) - peak_context(orig) / 32) <= 1 + raised
    # 128k contexts become 4k ones: every scaled coding program fits a 4,200-token engine.
    assert max(peak_context(p) for p in scaled) <= 4_200
    assert max(peak_context(p) for p in programs) > 60_000


def test_every_turn_keeps_an_output_token() -> None:
    program = Program(
        program_id="p",
        agent="a",
        segments=(
            Segment(prompt_tokens=100, output_tokens=3, tool="t", returned_tokens=5),
            Segment(prompt_tokens=108, output_tokens=2),
        ),
    )
    (scaled,) = scale_tokens([program], 0.01)
    assert [s.output_tokens for s in scaled.segments] == [1, 1]
    assert scaled.segments[0].prompt_tokens == 1
    assert scale_tokens([program], 1.0) == [program]


@pytest.mark.parametrize("text", ["0", "-1", "x", "1/0", "inf", "nan"])
def test_a_bad_scale_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--token-scale"):
        parse_scale(text, "--token-scale")


def test_fractions_are_accepted() -> None:
    assert parse_scale("1/32", "--token-scale") == 0.03125
    assert parse_scale("0.5", "--token-scale") == 0.5


def test_fitting_leaves_out_programs_longer_than_the_engine() -> None:
    programs = scale_tokens(generate_longctx(50, kinds="coding", seed=1), 1 / 16)
    kept = fitting(programs, 2_000)
    assert kept and len(kept) < len(programs)
    assert all(peak_context(p) < 2_000 for p in kept)


def test_bench_builds_the_scaled_workload() -> None:
    args = build_parser().parse_args(
        ["bench", "--trace", "longctx:coding", "--num-programs", "30", "--token-scale", "1/32"]
    )
    config = bench_cli.build_config(args)
    assert config.trace_name == "longctx:coding-tok0.03125"
    assert config.programs == scale_tokens(generate_longctx(30, kinds="coding"), 1 / 32)
    unscaled = bench_cli.build_config(
        build_parser().parse_args(["bench", "--trace", "longctx:coding", "--num-programs", "30"])
    )
    assert unscaled.trace_name == "longctx:coding"
    assert max(peak_context(p) for p in unscaled.programs) > 4 * max(
        peak_context(p) for p in config.programs
    )
