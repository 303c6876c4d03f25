"""``lamps-agent bench`` as a person meets it: a table that fits, one-line errors naming the flag,
nothing silently ignored, results never overwritten silently, plots where every policy shows."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lamps_agent.bench import runner
from lamps_agent.bench.aggregate import UNSTABLE, group
from lamps_agent.bench.plots import _styles, plot_latency_vs_qps
from lamps_agent.bench.report import Baseline, reductions, results_table
from lamps_agent.bench.runner import RECOMMENDED_POLICY, BenchConfig, RunSpec, run_one
from lamps_agent.bench.tables import _secs, _short_difference, rows_table
from lamps_agent.cli import bench as bench_cli
from lamps_agent.cli.main import build_parser, main
from lamps_agent.cli.progress import RunProgress
from lamps_agent.metrics import RunSummary
from lamps_agent.presets import load_preset
from lamps_agent.workloads import generate_programs

SMALL = ["bench", "--synthetic", "12", "--set", "gpu_kv_gb=4", "-q"]


def bench(*args: str) -> int:
    return main([*SMALL, *args])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("lamps-agent: error: ")
    return err


@pytest.fixture(scope="module")
def summaries() -> list[RunSummary]:
    """Every policy, and predictor labels as long as they get (a fallen-back ``learned``)."""
    config = BenchConfig(
        programs=generate_programs(8, seed=0),
        trace_name="synthetic-8",
        preset=load_preset("a100-gptj6b", overrides={"gpu_kv_gb": 4}),
        qps=[2.0],
        policies=["vllm", "infercept", "lamps", "lamps-norank", "sjf", "wait", "nested-wait"],
    )
    out = []
    for spec in config.specs():
        s = run_one(config, spec).summary
        out += [s, _relabel(s, "learned→history")]
    return out


def _relabel(s: RunSummary, predictor: str) -> RunSummary:
    import dataclasses

    return dataclasses.replace(s, predictor=predictor)


def _rendered_width(table: Any) -> int:
    console = Console(width=400, record=True)
    console.print(table)
    return max(len(line) for line in console.export_text().splitlines())


def test_the_default_table_fits_120_columns_and_wide_shows_every_column(
    summaries: list[RunSummary],
) -> None:
    narrow = results_table(summaries, "infercept")
    wide = results_table(summaries, "infercept", wide=True)
    assert _rendered_width(narrow) <= 120
    headers = [c.header for c in wide.columns]
    assert {"engine s", "swap GB", "Δengine"} <= set(headers)
    assert not {"engine s", "swap GB", "Δengine"} & {c.header for c in narrow.columns}


def test_bad_values_name_their_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--policies", ""): "--policies: give at least one",
        ("--policies", "lamps,lamps"): "--policies: lamps listed twice",
        ("--policies", "lamps,edf"): "--policies: unknown policy 'edf'; valid:",
        ("--predictors", "noisy:abc"): "--predictors: predictor 'noisy:abc': PCT must be a "
        "percentage error in [0, 500] (noisy:40 = 40 %), got 'abc'",
        ("--predictors", "noisy:-5"): "PCT must be a percentage error in [0, 500]",
        ("--predictors", " , "): "--predictors: give at least one",
        ("--qps", "abc"): "--qps: 'abc' is not a number",
        ("--qps", "2,inf"): "--qps: 'inf' must be a positive number",
        ("--starvation-threshold", "soon"): "--starvation-threshold: expected an integer or 'off'",
        ("--duration", "-1"): "--duration: must be positive",
        ("--pool", "100"): "--pool: only for a generated long-context workload",
        ("--pool", "0"): "--pool: must be positive",
        ("--tenant-weights", "t0"): "--tenant-weights: 't0' is not TENANT=WEIGHT (t0=3)",
        ("--tenant-weights", "t1=2"): "--tenant-weights: no tenant 't1' (with --tenants 1: t0)",
        ("--tenant-weights", "t0=-1"): "--tenant-weights t0: '-1' must be a positive number",
    }
    for (flag, value), message in cases.items():
        assert bench(flag, value, "--out", str(tmp_path / "o"), "--no-plots") == 2
        assert message in one_line_error(capsys)


def test_nothing_is_silently_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--timeline", "sjf@2"): "--timeline sjf@2: policy 'sjf' is not run",
        ("--timeline", "lamps@7"): "--timeline lamps@7: qps 7 is not run; --qps: 2",
        (
            "--baseline",
            "sjf",
        ): "--baseline sjf: not among --policies (vllm, infercept, lamps, continuum, thunderagent)",
    }
    for args, message in cases.items():
        assert bench("--qps", "2", *args, "--out", str(tmp_path / "o")) == 2
        assert message in one_line_error(capsys)
    assert bench("--timeline", "lamps@2", "--no-plots", "--out", str(tmp_path / "o")) == 2
    assert "--timeline: nothing is plotted with --no-plots" in one_line_error(capsys)


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything is simulated."""

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("simulated before the output folder was checked")

    monkeypatch.setattr(bench_cli, "make_bound", refuse)


@pytest.mark.usefixtures("no_simulation")
def test_an_unwritable_out_fails_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert bench("--out", str(a_file)) == 2
    assert f"--out {a_file}: is a file, not a folder" in one_line_error(capsys)
    assert bench("--out", str(a_file / "below")) == 2
    assert f"--out {a_file / 'below'}: cannot write there" in one_line_error(capsys)


def test_results_are_never_overwritten_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    assert bench("--qps", "2", "--policies", "lamps", "--out", str(out)) == 0
    first = (out / "results.json").read_text()
    assert (out / "kv_timeline.png").exists()
    capsys.readouterr()

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("simulated although the folder holds an earlier run")

    with monkeypatch.context() as m:
        m.setattr(bench_cli, "make_bound", refuse)
        assert bench("--qps", "2", "--policies", "lamps", "--out", str(out)) == 2
    assert "holds an earlier run" in one_line_error(capsys)
    assert (out / "results.json").read_text() == first

    args = ("--qps", "3", "--policies", "lamps", "--out", str(out), "--no-plots", "--overwrite")
    assert bench(*args) == 0
    assert json.loads((out / "results.json").read_text())["config"]["qps"] == [3.0]
    assert not (out / "kv_timeline.png").exists()  # the earlier run's plot went with it


def test_the_default_out_is_a_new_folder_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert bench("--qps", "2", "--policies", "lamps", "--no-plots") == 0
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("synthetic-12-") for r in runs)
    assert all((r / "results.json").exists() for r in runs)


def test_a_builtin_trace_keeps_its_builtin_name(tmp_path: Path) -> None:
    args = ["bench", "--trace", "single-api", "--num-programs", "4", "--qps", "2"]
    assert main([*args, "--policies", "lamps", "--no-plots", "-q", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["trace"] == "single-api"
    assert payload["runs"][0]["trace"] == "single-api"


def test_a_fallen_back_learned_predictor_is_labelled_with_what_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAMPS_PREDICTOR_DIR", str(tmp_path / "no-model"))
    out = tmp_path / "o"
    args = ("--qps", "2", "--policies", "lamps", "--predictors", "learned", "--no-plots")
    assert bench(*args, "--out", str(out)) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["predictor"] for r in rows] == ["learned→history"]
    assert "the rows labelled learned→history ran history" in capsys.readouterr().out
    assert runner.ran_predictor_label("noisy:40", "noisy") == "noisy:40"


def test_a_robustness_run_compares_with_the_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    args = ("--qps", "2", "--policies", "lamps", "--predictors", "oracle,noisy:60", "--no-plots")
    assert bench(*args, "--out", str(out)) == 0
    assert "lower than lamps (oracle)" in capsys.readouterr().out
    rows = {r["predictor"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert {r["baseline_predictor"] for r in rows.values()} == {"oracle"}
    noisy, oracle = rows["noisy:60"], rows["oracle"]
    expected = 100 * (float(oracle["e2e_mean"]) - float(noisy["e2e_mean"]))
    expected /= float(oracle["e2e_mean"])
    assert float(noisy["lower_than_baseline_e2e_mean_pct"]) == pytest.approx(expected)
    assert float(noisy["e2e_mean"]) != float(oracle["e2e_mean"])  # not compared with itself


def test_baseline_choice() -> None:
    choose = bench_cli.choose_baseline
    assert choose(None, ["vllm", "infercept", "lamps"], ["oracle"]) == Baseline("infercept")
    assert choose("lamps", ["vllm", "lamps"], ["oracle", "noisy:20"]) == Baseline("lamps")
    assert choose(None, ["lamps"], ["oracle", "noisy:20"]) == Baseline("lamps", "oracle")
    assert choose(None, ["lamps"], ["oracle"]) is None  # nothing else to compare with
    with pytest.raises(ValueError, match="the only policy run"):
        choose("lamps", ["lamps"], ["history"])


def test_reductions_against_a_fixed_predictor(summaries: list[RunSummary]) -> None:
    reds = reductions(summaries, Baseline("lamps", "oracle"))
    lamps_rows = [i for i, s in enumerate(summaries) if s.policy == "lamps"]
    assert {reds[i].baseline_predictor for i in lamps_rows} == {"oracle"}


def test_the_kv_timeline_defaults_to_the_recommended_policy() -> None:
    args = build_parser().parse_args(["bench", "--policies", "lamps,vllm", "--qps", "2,5"])
    timeline = bench_cli._timeline(args, ["lamps", "vllm"], ["oracle"], [2.0, 5.0])
    assert timeline == RunSpec(policy=RECOMMENDED_POLICY, predictor="oracle", qps=5.0, seed=0)
    timeline = bench_cli._timeline(args, ["sjf", "vllm"], ["oracle"], [2.0, 5.0])
    assert timeline is not None and timeline.policy == "vllm"


def test_every_policy_is_visible_in_the_latency_plot(
    summaries: list[RunSummary], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.figure

    figures: list[Any] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(fig)
        real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    oracle_only = [s for s in summaries if s.predictor == "oracle"]
    plot_latency_vs_qps(oracle_only, tmp_path / "p.png")
    (fig,) = figures
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0  # no magnified noise: every axis starts at 0
        lines = ax.get_lines()
        assert len(lines) == 7
        styles = {(ln.get_color(), ln.get_marker()) for ln in lines}
        assert len(styles) == 7  # each policy its own colour and marker
        top = max(lines, key=lambda ln: ln.get_zorder())
        assert top.get_label() == RECOMMENDED_POLICY and lines[-1] is top  # drawn last, on top
    styles = _styles(summaries)  # with a second predictor: lamps' oracle run is the top line
    assert styles[-1].label == RECOMMENDED_POLICY
    assert len({(st.color, st.marker, st.linestyle) for st in styles}) == len(styles)


def test_an_unreachable_engine_url_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert bench("--qps", "2", "--engine", url, "--out", str(tmp_path / "o")) == 2
    assert f"--engine {url}: cannot connect" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_version_and_help_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    import lamps_agent

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lamps-agent {lamps_agent.__version__}"
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: 1,2,3,4,5,6)",
        "(default: vllm,infercept,lamps,continuum,thunderagent)",
        "(default: 0)",
    ):
        assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_missing_sqlite_registry_is_not_created_for_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tool_registry", reason="the tool registry is not installed")
    pytest.importorskip("torch", reason="the learned extra is not installed")
    db = tmp_path / "missing" / "registry.db"
    assert main(["predictor", "train", "--registry", f"sqlite:///{db}"]) == 2
    assert f"no registry database at {db}" in one_line_error(capsys)
    assert not db.parent.exists()


def test_policy_options_reach_the_simulated_policy_and_are_refused_when_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[str, dict[str, Any]]] = []
    real = runner.make_policy

    def spy(name: str, **options: Any) -> Any:
        made.append((name, {k: options[k] for k in options if k not in ("predictor", "preset")}))
        return real(name, **options)

    monkeypatch.setattr(runner, "make_policy", spy)
    out = tmp_path / "o"
    given = ["--policy-options", 'program={"max_age_s": 30}']
    args = ["--qps", "2", "--policies", "program,lamps", "--no-plots", "--out", str(out)]
    assert bench(*args, *given) == 0
    assert {"max_age_s": 30} in [o for name, o in made if name == "program"]
    assert all("max_age_s" not in o for name, o in made if name == "lamps")
    capsys.readouterr()
    for bad, why in (
        ('sjf={"a": 1}', "LABEL one of program, lamps"),
        ("program={", "not JSON"),
        ('program={"bogus": 1}', "policy 'program': bad option"),
    ):
        assert bench(*args, "--overwrite", "--policy-options", bad) == 2
        assert why in one_line_error(capsys)


def test_policy_options_of_a_compare_run_name_servers_not_simulated_policies() -> None:
    # The labels of --engine compare are servers (checked by the engine's parser when it
    # starts them), not --policies: building the config must not refuse them.
    args = build_parser().parse_args(
        ["bench", "--engine", "compare", "--model", "m", "--engine-policies", "stock,program",
         "--policy-options", 'program={"load_window_s": 6}']
    )  # fmt: skip
    assert bench_cli.build_config(args).options_by_policy == {}


# -- progress and an 80-column table (issue 24, item 4) -----------------------------------------


def test_off_a_terminal_each_finished_run_is_one_line_written_at_once() -> None:
    stream = io.StringIO()
    with RunProgress(3, stream=stream) as progress:
        progress.finished("lamps oracle qps=2 seed=0", "E2E mean 12.00 s, stable")
        assert re.fullmatch(
            r"\[1/3\] lamps oracle qps=2 seed=0: E2E mean 12\.00 s, stable \(\d+ s\)\n",
            stream.getvalue(),
        )
        progress.finished("vllm oracle qps=2 seed=0", "E2E mean 13.00 s, unstable")
        assert stream.getvalue().splitlines()[1].startswith("[2/3] vllm oracle qps=2 seed=0: ")
    quiet = io.StringIO()
    with RunProgress(1, stream=quiet, quiet=True) as progress:
        progress.finished("x", "y")
    assert quiet.getvalue() == ""


def test_on_a_terminal_the_progress_is_a_live_bar_not_lines() -> None:
    stream = io.StringIO()
    with RunProgress(2, stream=stream, terminal=True) as progress:
        progress.finished("lamps oracle qps=2 seed=0", "E2E mean 12.00 s, stable")
        progress.finished("vllm oracle qps=2 seed=0", "E2E mean 13.00 s, stable")
    shown = stream.getvalue()
    assert "\x1b[" in shown and "2/2" in shown  # cursor control: one line redrawn in place
    assert "[1/2]" not in shown and "E2E mean" not in shown


def test_a_piped_bench_prints_a_line_per_run_as_it_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--qps", "1,2", "--policies", "vllm,lamps", "--no-plots", "--out", str(tmp_path))
    assert main(["bench", "--synthetic", "12", "--set", "gpu_kv_gb=4", *args]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    assert [ln.split(":")[0] for ln in lines] == [
        "[1/4] vllm oracle qps=1 seed=0",
        "[2/4] lamps oracle qps=1 seed=0",
        "[3/4] vllm oracle qps=2 seed=0",
        "[4/4] lamps oracle qps=2 seed=0",
    ]


def _rendered(table: Any, width: int) -> list[str]:
    console = Console(width=width, record=True)
    console.print(table)
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_the_rows_table_fits_80_columns_and_wide_shows_the_full_table(
    summaries: list[RunSummary],
) -> None:
    rows = group(summaries * 2, stable=[True, False] * len(summaries))  # two seeds, some unstable
    narrow, wide = (
        rows_table(rows, Baseline("infercept")),
        rows_table(rows, Baseline("infercept"), wide=True),
    )
    shown = _rendered(narrow, 80)
    assert max(len(line) for line in shown) <= 80
    assert "…" not in "\n".join(shown)  # nothing cut: a long label wraps instead
    assert len([ln for ln in _rendered(narrow, 400) if ln.startswith("nested-wait")]) == 2
    headers = [c.header for c in wide.columns]
    assert {"alone s", "engine s", "measured", "recomputed"} <= set(headers)
    assert not {"alone s", "engine s", "measured", "recomputed"} & {
        c.header for c in narrow.columns
    }
    assert max(len(line) for line in _rendered(wide, 400)) > 80


def test_short_numbers_keep_three_significant_digits() -> None:
    assert [_secs(v) for v in (1578.0, 621.75, 55.99, 3.456, 0.0452)] == [
        "1578",
        "622",
        "56.0",
        "3.46",
        "0.045",
    ]
    assert [_short_difference(t) for t in ("+23.44%", "-1.3%", "≈", UNSTABLE, "n/a")] == [
        "+23%",
        "-1.3%",
        "≈",
        "—",
        "n/a",
    ]
