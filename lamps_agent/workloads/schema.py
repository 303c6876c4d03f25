"""A small JSON Schema validator: the subset of draft 2020-12 that ``trace.schema.json`` uses.

The core takes no dependency for one schema, so this follows the keywords the trace schema needs —
``type``, ``properties``, ``additionalProperties``, ``items``, ``required``, ``dependentRequired``,
``minimum``, ``minLength``, ``minItems``, ``minProperties``, ``pattern``, ``if``/``then``/``else``,
boolean schemas and local ``$ref`` — and refuses a schema using any other assertion, so it cannot
silently skip one.  A violation names where (the path of keys and indexes) and what, in words a user
can act on; a subschema's ``title`` names what a value must be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

Schema = dict[str, Any] | bool
Path = tuple[str | int, ...]

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}
KEYWORDS = _ANNOTATIONS | {
    "type",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "dependentRequired",
    "minimum",
    "minLength",
    "minItems",
    "minProperties",
    "pattern",
    "if",
    "then",
    "else",
    "$ref",
}
_NOUNS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """Where (keys and indexes from the document's root) and what is wrong there."""

    path: Path
    problem: str  # a predicate: "must be an integer, got '5'", "needs 'prompt_tokens'"


@cache
def trace_schema() -> dict[str, Any]:
    """The trace format's schema, shipped beside this module (docs/traces.md)."""
    text = (resources.files("lamps_agent.workloads") / "trace.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def unsupported_keywords(schema: Schema) -> set[str]:
    """Keywords of ``schema`` (and its subschemas) that this validator does not follow."""
    if isinstance(schema, bool):
        return set()
    found = set(schema) - KEYWORDS
    subschemas: list[Schema] = [
        *schema.get("properties", {}).values(),
        *schema.get("$defs", {}).values(),
    ]
    subschemas += [
        schema[k] for k in ("additionalProperties", "items", "if", "then", "else") if k in schema
    ]
    for sub in subschemas:
        found |= unsupported_keywords(sub)
    return found


def violations(instance: Any, schema: Schema, *, root: Schema | None = None) -> Iterator[Violation]:
    """Every violation of ``schema`` by ``instance``, depth first, in document order."""
    yield from _check(instance, schema, root if root is not None else schema, ())


def _check(value: Any, schema: Schema, root: Schema, path: Path) -> Iterator[Violation]:
    if schema is True:
        return
    if schema is False:
        yield Violation(path, "is not allowed here")
        return
    if "$ref" in schema:
        yield from _check(value, _resolve(schema["$ref"], root), root, path)
    if "type" in schema and not _has_type(value, schema["type"]):
        yield Violation(path, f"must be {_noun(schema)}, got {_shown(value)}")
        return
    for problem in _scalar_problems(value, schema):
        yield Violation(path, problem)
    if isinstance(value, dict):
        yield from _check_object(value, schema, root, path)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            yield Violation(path, _too_few(schema, schema["minItems"], "item"))
        for i, item in enumerate(value):
            yield from _check(item, schema.get("items", True), root, (*path, i))
    if "if" in schema:
        passed = next(_check(value, schema["if"], root, path), None) is None
        branch = schema.get("then" if passed else "else", True)
        yield from _check(value, branch, root, path)


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], root: Schema, path: Path
) -> Iterator[Violation]:
    if len(value) < schema.get("minProperties", 0):
        yield Violation(path, _too_few(schema, schema["minProperties"], "entry"))
    for key in schema.get("required", []):
        if key not in value:
            yield Violation(path, f"needs {key!r}")
    for key, needed in schema.get("dependentRequired", {}).items():
        for other in needed:
            if key in value and other not in value:
                yield Violation(path, f"needs {other!r} beside {key!r}")
    properties = schema.get("properties", {})
    for key, item in value.items():
        sub = properties.get(key, schema.get("additionalProperties", True))
        yield from _check(item, sub, root, (*path, key))


def _scalar_problems(value: Any, schema: dict[str, Any]) -> Iterator[str]:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and "minimum" in schema and value < schema["minimum"]:
        yield f"must be >= {schema['minimum']}, got {value!r}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            yield (
                "must not be empty"
                if schema["minLength"] == 1
                else f"must be at least {schema['minLength']} characters"
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            yield f"must be {_noun(schema)}, got {_shown(value)}"


def _resolve(ref: str, root: Schema) -> Schema:
    if not ref.startswith("#/") or isinstance(root, bool):
        raise ValueError(f"unsupported $ref {ref!r}: only local references (#/...)")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    resolved: Schema = node
    return resolved


def _has_type(value: Any, expected: str | list[str]) -> bool:
    return any(_is(value, name) for name in ([expected] if isinstance(expected, str) else expected))


def _is(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    python = {
        "object": dict,
        "array": list,
        "string": str,
        "number": int | float,
        "null": type(None),
    }
    return isinstance(value, python[name])


def _noun(schema: dict[str, Any]) -> str:
    if "title" in schema:
        return str(schema["title"])
    types = schema.get("type", [])
    return " or ".join(_NOUNS[t] for t in ([types] if isinstance(types, str) else types))


def _too_few(schema: dict[str, Any], n: int, what: str) -> str:
    if "title" in schema:
        return f"must be {schema['title']}"
    return "must not be empty" if n == 1 else f"must have at least {n} {what}s"


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return _NOUNS["object" if isinstance(value, dict) else "array"]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
