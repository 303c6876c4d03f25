"""Write the lists in the docs that the registries hold: policies, presets, predictors.

Each list sits between marker comments, ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``, and is rewritten from its registry — a policy's one-line description
is its class docstring's first paragraph (else its module's), a preset's its ``description``, a
predictor's its factory's docstring.  A policy, preset or predictor registered in code reaches the
docs by running::

    python tools/generate_docs.py           # rewrite the blocks
    python tools/generate_docs.py --check   # exit 1, naming each stale block

tests/core/test_docs.py runs the check.  Developer tooling: nothing in the product imports it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "architecture.md",)
_BLOCK = re.compile(r"(<!-- generated:([a-z-]+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.DOTALL)
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :class:`~a.b.C` -> `a.b.C`


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line, reST literals as Markdown's."""
    if not doc:
        return ""
    para = doc.strip().split("\n\n")[0]
    text = " ".join(para.split())
    return _ROLE.sub(r"`\1`", text).replace("``", "`")


def describe_class(cls: type) -> str:
    """A class's own docstring (``__doc__`` is not inherited), else its module's."""
    return first_paragraph(cls.__doc__) or first_paragraph(sys.modules[cls.__module__].__doc__)


def policies() -> list[tuple[str, str]]:
    from lamps_agent.policies import POLICIES

    return [(name, describe_class(POLICIES.get(name))) for name in POLICIES]


def presets() -> list[tuple[str, str]]:
    from lamps_agent.presets import PRESETS

    return [(name, PRESETS.get(name).description) for name in PRESETS]


def predictors() -> list[tuple[str, str]]:
    from lamps_agent.predictors import PREDICTORS

    return [(name, first_paragraph(PREDICTORS.get(name).__doc__)) for name in PREDICTORS]


LISTS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "policies": policies,
    "presets": presets,
    "predictors": predictors,
}


def render(kind: str) -> str:
    lines = []
    for name, text in LISTS[kind]():
        if not text:
            raise ValueError(f"{kind[:-1]} {name!r} has no description to list")
        lines.append(f"- `{name}` — {text}\n")
    return "".join(lines)


def rewrite(text: str) -> str:
    """``text`` with every generated block rewritten from its registry."""

    def block(m: re.Match[str]) -> str:
        kind = m.group(2)
        if kind not in LISTS:
            raise ValueError(f"unknown generated block {kind!r}; known: {', '.join(LISTS)}")
        return f"{m.group(1)}{render(kind)}{m.group(4)}"

    return _BLOCK.sub(block, text)


def stale(paths: tuple[Path, ...] = DOCS) -> list[str]:
    """What differs from the registries: ``file: block`` for each stale block, and each list
    that has no block in any of ``paths``."""
    out = []
    found = set()
    for path in paths:
        for m in _BLOCK.finditer(path.read_text()):
            kind = m.group(2)
            found.add(kind)
            if m.group(3) != render(kind):
                out.append(f"{path.name}: {kind}")
    out += [f"no generated:{kind} block" for kind in LISTS if kind not in found]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        entries = stale()
        for entry in entries:
            print(f"stale: {entry} (run python tools/generate_docs.py)", file=sys.stderr)
        return 1 if entries else 0
    for path in DOCS:
        text = path.read_text()
        new = rewrite(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout that is not installed
    sys.exit(main())
