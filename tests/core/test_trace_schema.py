"""The trace format's JSON Schema: shipped, followed by the loader's validator, printed in
docs/traces.md, and read the same way by a standard validator."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lamps_agent.errors import TraceError
from lamps_agent.workloads import load_trace
from lamps_agent.workloads.schema import trace_schema, unsupported_keywords, violations

DOCS = Path(__file__).resolve().parents[2] / "docs" / "traces.md"

TOKEN = {"prompt_tokens": 5, "completion_tokens": 2, "api_time": 0.5, "api_token_length": 3}
LAST = {"prompt_tokens": 10, "completion_tokens": 2}
TEXT = {"prompt": "hi", "completion": "ok", "api_time": "2.5", "api_token": "Generate an image"}


def _with(segment: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**segment, **changes}
    return {k: v for k, v in out.items() if v is not ...}


# (document, the first violation's message or None)
CASES: list[tuple[Any, str | None]] = [
    ({"c1": [TOKEN, LAST]}, None),
    ({"c1": [TEXT, {"prompt": "x", "completion": "y"}], "c2": [LAST]}, None),
    ({"c1": [_with(TOKEN, tool="search"), _with(LAST, tool=None)]}, None),
    ({"c1": [_with(TOKEN, prompt_tokens=5.0), LAST]}, None),
    ({"c1": [TOKEN, _with(LAST, extra="ignored")]}, None),
    ({"c1": []}, "conversation 'c1': must be a non-empty list of segments"),
    (
        {"c1": [TOKEN, LAST], "c2": [TOKEN, TOKEN, _with(LAST, prompt_tokens=...)]},
        "conversation 'c2' segment 2: needs 'prompt_tokens'",
    ),
    (
        {"c1": [_with(TOKEN, api_token_length=...), LAST]},
        "conversation 'c1' segment 0: needs 'api_token_length' beside 'api_time'",
    ),
    (
        {"c1": [_with(TEXT, api_token=...), LAST]},
        "conversation 'c1' segment 0: needs 'api_token' beside 'api_time'",
    ),
    (
        {"c1": [TOKEN, _with(LAST, completion_tokens=True)]},
        "conversation 'c1' segment 1: 'completion_tokens' must be an integer, got True",
    ),
    (
        {"c1": [_with(TOKEN, api_time="soon"), LAST]},
        "conversation 'c1' segment 0: 'api_time' must be a number of seconds >= 0, got 'soon'",
    ),
    (
        {"c1": [_with(TOKEN, api_time="-1"), LAST]},
        "conversation 'c1' segment 0: 'api_time' must be a number of seconds >= 0, got '-1'",
    ),
    (
        {"c1": [_with(TOKEN, tool=""), LAST]},
        "conversation 'c1' segment 0: 'tool' must not be empty",
    ),
    (
        {"c1": [_with(TOKEN, tool=3), LAST]},
        "conversation 'c1' segment 0: 'tool' must be a string or null, got 3",
    ),
    (
        {"c1": [_with(TEXT, prompt=["a"]), LAST]},
        "conversation 'c1' segment 0: 'prompt' must be a string, got a list",
    ),
    (
        {"c1": {"0": TOKEN}},
        "conversation 'c1': must be a non-empty list of segments, got an object",
    ),
]


def test_the_validator_follows_every_keyword_of_the_schema() -> None:
    assert unsupported_keywords(trace_schema()) == set()
    assert unsupported_keywords({"type": "string", "format": "date"}) == {"format"}


@pytest.mark.parametrize(("document", "message"), CASES)
def test_a_violation_names_the_conversation_segment_and_field(
    tmp_path: Path, document: Any, message: str | None
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))
    if message is None:
        assert len(load_trace(path)) == len(document)
    else:
        with pytest.raises(TraceError) as info:
            load_trace(path)
        assert str(info.value) == f"{path}: {message}"


def test_a_standard_validator_agrees_with_ours() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (not needed by lamps-agent)"
    )
    schema = trace_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    standard = jsonschema.Draft202012Validator(schema)
    for document, message in CASES:
        ours = next(violations(document, schema), None)
        assert standard.is_valid(document) == (ours is None) == (message is None), document


def test_the_builtin_traces_follow_the_schema() -> None:
    for name in ("merged_exp_uniform.json", "diverse_oneapi_merged_exp_uniform.json"):
        path = Path(__file__).resolve().parents[2] / "lamps_agent" / "data" / name
        assert next(violations(json.loads(path.read_text()), trace_schema()), None) is None


def test_the_docs_print_the_shipped_schema_and_a_loadable_example(tmp_path: Path) -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    example, printed = (json.loads(block) for block in blocks)
    assert printed == trace_schema()
    path = tmp_path / "example.json"
    path.write_text(json.dumps(example))
    agents = sorted(p.agent for p in load_trace(path).programs)
    assert agents == ["chat_image", "math"]


def test_the_schema_is_not_mutated_by_validation() -> None:
    before = copy.deepcopy(trace_schema())
    list(violations(CASES[6][0], trace_schema()))
    assert trace_schema() == before
