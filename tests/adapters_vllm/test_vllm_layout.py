"""``adapters/vllm`` holds only what vLLM loads; the tooling around it lives in
``adapters/vllm/tools``, which no plug-in module imports (so vLLM never loads it).  Needs no vLLM."""

from __future__ import annotations

import ast
from pathlib import Path

import adapters.vllm

PLUGIN = Path(adapters.vllm.__path__[0])


def _imported(path: Path) -> set[str]:
    """Every name the module imports, as an absolute dotted name (relative imports resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = "adapters.vllm".rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(p for p in (package, node.module) if p)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_plugin_module_imports_the_tooling() -> None:
    modules = sorted(PLUGIN.glob("*.py"))
    assert {p.stem for p in modules} >= {"scheduler", "queue", "connector", "config", "pins"}
    for path in modules:
        bad = {n for n in _imported(path) if n.startswith("adapters.vllm.tools")}
        assert not bad, f"{path.name} imports the tooling: {sorted(bad)}"


def test_the_tooling_is_not_beside_the_plugin() -> None:
    tools = {"server", "profile", "validate", "replay", "cluster", "tiny_model", "cli"}
    assert not tools & {p.stem for p in PLUGIN.glob("*.py")}
    assert tools <= {p.stem for p in (PLUGIN / "tools").glob("*.py")}
