"""The README's 30-second example runs, prints one line per policy, and agrees with
``lamps-agent bench`` at the same point (a shortened window keeps it to a few seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from lamps_agent.bench import protocol
from lamps_agent.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
WINDOW_FACTOR = 3.0  # measured window: 3 unloaded mean E2E latencies instead of 20
LINE = re.compile(r"(stable|UNSTABLE)\s+E2E\s+([\d.]+)s\s+P99\s+([\d.]+)s")


def readme_example() -> str:
    """The first ``python`` block under the README's "30-second example" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## 30-second example", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "README.md: no python block under '## 30-second example'"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_agrees_with_the_bench(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(protocol, "WINDOW_FACTOR", WINDOW_FACTOR)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["vllm", "infercept", "lamps"]

    args = ["bench", "--qps", "4", "--policies", "vllm,infercept,lamps", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--out", str(tmp_path / "bench")]) == 0
    runs = json.loads((tmp_path / "bench" / "results.json").read_text())["runs"]
    for line, run in zip(lines, runs, strict=True):
        fields = LINE.search(line)
        assert fields is not None, line
        state, e2e, p99 = fields.groups()
        assert (state == "stable") == run["stable"], line
        assert float(e2e) == pytest.approx(run["e2e"]["mean"], abs=0.005), line
        assert float(p99) == pytest.approx(run["e2e"]["p99"], abs=0.05), line
