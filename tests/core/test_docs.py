"""The lists in docs/architecture.md are the registries' (tools/generate_docs.py writes them)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest

from lamps_agent.policies import POLICIES
from lamps_agent.predictors import PREDICTORS
from lamps_agent.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "tools/generate_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_list_what_the_registries_hold(gen: ModuleType) -> None:
    stale = gen.stale()
    assert not stale, f"{stale}: run `python tools/generate_docs.py` and commit the result"


@pytest.mark.parametrize(
    ("kind", "registry"),
    [("policies", POLICIES), ("presets", PRESETS), ("predictors", PREDICTORS)],
)
def test_every_registered_name_is_listed_with_a_description(
    gen: ModuleType, kind: str, registry: Iterable[str]
) -> None:
    lines = gen.render(kind).splitlines()
    assert [line.split("`")[1] for line in lines] == list(registry)
    assert all(len(line.split(" — ", 1)[1]) > 10 for line in lines)


def test_a_stale_block_is_named_and_rewritten(gen: ModuleType, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n<!-- generated:policies -->\n- `gone` — a policy no longer registered\n"
        "<!-- /generated:policies -->\nend\n"
    )
    stale = gen.stale((doc,))
    assert "doc.md: policies" in stale
    assert "no generated:presets block" in stale
    text = gen.rewrite(doc.read_text())
    assert "`gone`" not in text and "- `lamps` — " in text
    assert text.startswith("intro\n") and text.endswith("<!-- /generated:policies -->\nend\n")


def test_a_class_without_a_docstring_is_described_by_its_module(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = ModuleType("fake_policy", "``fake``: a policy of its own module.\n\nDetails.")
    monkeypatch.setitem(sys.modules, "fake_policy", module)
    bare = type("BarePolicy", (), {"__module__": "fake_policy"})
    documented = type("Documented", (bare,), {"__doc__": "Its own\n    words.", "__module__": "x"})
    assert gen.describe_class(bare) == "`fake`: a policy of its own module."
    assert gen.describe_class(documented) == "Its own words."
