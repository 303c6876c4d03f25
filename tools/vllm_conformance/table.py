"""Print the conformance table from run.sh's per-column JSON files.

A test "builds a scheduler" when, on stock, it constructed a vLLM Scheduler (any subclass).
On a plug-in column, a test that built a scheduler but no Lamps* class is marked `notlamps`
(the plug-in was not exercised: e.g. the test builds a DiffusionScheduler itself).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLS = ["stock", "vllm", "lamps", "program"]


def cell(rec: dict | None, col: str) -> str:
    if rec is None:
        return "-"
    o = rec.get("outcome", "?")
    if o == "passed":
        s = "pass"
    elif o == "skipped":
        s = "skip"
    else:
        s = "FAIL"
    if col != "stock" and rec.get("built") and not any(b.startswith("Lamps") for b in rec["built"]):
        s += "(notlamps)"
    return s


def main(outdir: str) -> None:
    d = Path(outdir)
    data = {
        c: json.loads((d / f"{c}.json").read_text()) for c in COLS if (d / f"{c}.json").exists()
    }
    cols = [c for c in COLS if c in data]
    names = sorted({n for c in cols for n in data[c]})
    builds = lambda n: bool(data.get("stock", {}).get(n, {}).get("built"))  # noqa: E731
    short = lambda n: n.split("::", 1)[1]  # noqa: E731

    print(f"# conformance: {outdir}\n")
    meta = d / "meta.txt"
    if meta.exists():
        print("```\n" + meta.read_text().strip() + "\n```\n")

    # Summary over tests that build a scheduler on stock
    sched = [n for n in names if builds(n)]
    print(f"collected: {len(names)}; build a scheduler (on stock): {len(sched)}\n")
    # A plug-in column counts only the tests in which the plug-in was built (`exercised`);
    # tests that build their own non-Lamps scheduler (e.g. DiffusionScheduler) are n/a there.
    notl = lambda n, c: c != "stock" and "notlamps" in cell(data[c].get(n), c)  # noqa: E731
    print("| column | tests counted | passed | failed | skipped | n/a (plug-in not built) |")
    print("|---|---|---|---|---|---|")
    for c in cols:
        counted = [n for n in sched if not notl(n, c)]
        recs = [data[c].get(n) for n in counted]
        p = sum(1 for r in recs if r and r.get("outcome") == "passed")
        s = sum(1 for r in recs if r and r.get("outcome") == "skipped")
        f = sum(1 for r in recs if r and r.get("outcome") not in ("passed", "skipped"))
        na = len(sched) - len(counted)
        print(f"| {c} | {len(counted)} | {p} | {f} | {s} | {na if c != 'stock' else ''} |")
    if "stock" in data:
        print()
        for c in cols[1:]:
            reg = [
                n
                for n in sched
                if not notl(n, c)
                and data["stock"][n].get("outcome") == "passed"
                and (data[c].get(n) or {}).get("outcome") != "passed"
            ]
            print(f"- passes on stock, fails on {c}: {len(reg)}")

    print("\n## tests that fail in any column (tests building a scheduler)\n")
    print("| test | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    errors: list[str] = []
    for n in sched:
        cells = [cell(data[c].get(n), c) for c in cols]
        if all(x.startswith("pass") for x in cells):
            continue
        print(f"| {short(n)} | " + " | ".join(cells) + " |")
        for c in cols:
            r = data[c].get(n)
            if r and r.get("outcome") not in ("passed",):
                errors.append(f"- {short(n)} [{c}]: `{r.get('error', '')[:240]}`")
    print("\n### first line of each failure\n")
    print("\n".join(errors))

    print("\n## full table (all collected tests)\n")
    print("| test | builds | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for n in names:
        print(
            f"| {short(n)} | {'y' if builds(n) else 'n'} | "
            + " | ".join(cell(data[c].get(n), c) for c in cols)
            + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
