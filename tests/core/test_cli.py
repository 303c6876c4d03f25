import csv
import json
from pathlib import Path

import pytest

from lamps_agent.cli.main import main


def test_bench_writes_table_csv_json_markdown_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    code = main(
        [
            "bench",
            "--synthetic",
            "40",
            "--qps",
            "2,4",
            "--duration",
            "60",
            "--policies",
            "vllm,infercept,lamps",
            "--set",
            "gpu_kv_gb=4",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "lower than infercept" in printed and "lamps" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and {r["policy"] for r in rows} == {"vllm", "infercept", "lamps"}
    base = [r for r in rows if r["policy"] == "infercept"]
    assert all(float(r["lower_than_baseline_e2e_mean_pct"]) == 0.0 for r in base)
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["preset"]["gpu_kv_gb"] == 4.0 and len(payload["runs"]) == 6
    # each run says where its new programs waited for their first token
    for run in payload["runs"]:
        waits = run["first_turn_waits"]
        assert waits["turns"] >= run["num_requests"] and waits["prefill_s"] > 0
    assert (out / "results.md").read_text().startswith("| policy |")
    for png in ("latency_vs_qps.png", "kv_timeline.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_bench_on_a_trace_file_with_a_duration(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    trace.write_text(
        json.dumps(
            {
                "a": [
                    {
                        "prompt_tokens": 50,
                        "completion_tokens": 5,
                        "api_time": 0.5,
                        "api_token_length": 3,
                    },
                    {"prompt_tokens": 58, "completion_tokens": 4},
                ],
            }
        )
    )
    code = main(
        [
            "bench",
            "--trace",
            str(trace),
            "--qps",
            "2",
            "--policies",
            "lamps",
            "--predictors",
            "history",
            "--duration",
            "5",
            "--out",
            str(tmp_path / "o"),
            "--no-plots",
            "-q",
        ]
    )
    assert code == 0
    run = json.loads((tmp_path / "o" / "results.json").read_text())["runs"][0]
    assert run["predictor"] == "history" and run["num_requests"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "lamps,edf"], "unknown policy 'edf'; valid: continuum, infercept, lamps"),
        (["--predictors", "psychic"], "unknown predictor 'psychic'"),
        (["--preset", "b200"], "unknown preset 'b200'"),
        (["--set", "gpu_kv_gb=-1"], "gpu_kv_gb must be > 0"),
        (["--qps", "0"], "--qps: '0' must be a positive number"),
        (["--trace", "/nonexistent/trace.json"], "neither a trace file nor a built-in trace"),
        (
            ["--trace", "multiapi"],
            "--trace multiapi: neither a trace file nor a built-in trace (multi-api, single-api, "
            "longctx, longctx:coding, longctx:tool-use, longctx:chat); did you mean 'multi-api'?",
        ),
        (["--predictors", "noisy:abc"], "predictor 'noisy:abc': PCT must be a percentage error"),
    ],
)
def test_bench_bad_input_is_one_clear_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", *args, "--out", str(tmp_path), "-q", "--no-plots"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_core_and_its_cli_import_without_any_framework() -> None:
    """lamps_agent must work with none of the extras: block them and import everything."""
    import subprocess
    import sys

    code = """
import sys
BLOCKED = {"langchain", "langchain_core", "langgraph", "vllm", "sqlalchemy", "alembic", "torch",
           "transformers", "aiohttp", "asyncpg", "tool_registry", "adapters"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
import lamps_agent.sim, lamps_agent.policies, lamps_agent.predictors, lamps_agent.hints
import lamps_agent.predictors.learned
from lamps_agent.predictors import make_predictor
from lamps_agent.cli.main import main
assert type(make_predictor("learned")).__name__ == "HistoryPredictor"   # logged fallback
assert main(["bench", "--synthetic", "10", "--qps", "4", "--policies", "lamps", "--no-plots", "-q",
             "--out", sys.argv[1]]) == 0
print("ok")
"""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-c", code, out], capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
