"""Training the learned predictor on the model turns a tool registry recorded (``--registry``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamps_agent.predictors import PredictionQuery
from lamps_agent.predictors.learned import ModelStore

pytest.importorskip("torch")
tool_registry = pytest.importorskip("tool_registry")
pytestmark = pytest.mark.learned

# output length by (agent, tool the turn called): what the model must learn
LENGTHS = {("coder", "search"): 300, ("coder", None): 40, ("chat", "calc"): 20, ("chat", None): 150}


def record_sessions(url: str, spill_dir: Path, sessions: int = 50) -> None:
    """``sessions`` conversations of four turns each: two tool calls, a final answer, a tool call."""
    rng = np.random.default_rng(0)
    with tool_registry.ToolRegistry(url, spill_dir=spill_dir) as registry:
        for s in range(sessions):
            agent = "coder" if s % 2 else "chat"
            tool = "search" if agent == "coder" else "calc"
            for step, called in enumerate((tool, tool, None, tool)):
                registry.record_turn(
                    agent=agent,
                    step=step,
                    tool=called,
                    output_tokens=LENGTHS[agent, called] + int(rng.integers(-3, 4)),
                    prompt_tokens=200 + 50 * step,
                    session_id=f"{agent}-{s}",
                )


def test_train_and_eval_from_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lamps_agent.cli.main import main

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    record_sessions(url, tmp_path / "spill")
    data = ["--registry", url, "--seed", "0"]
    out = ["--out", str(tmp_path / "store"), "--encoder", "none", "--epochs", "40"]
    assert main(["predictor", "train", *data, *out]) == 0
    assert "v0001" in capsys.readouterr().out
    store = ModelStore(tmp_path / "store")
    assert store.manifest()["train"]["num_records"] == 200
    assert store.manifest()["train"]["sources"] == [f"registry:{url}"]

    _, model = store.load()
    queries = [  # the turns of a new conversation of each agent
        PredictionQuery(agent=agent, step=step, tool=called, prompt_tokens=200 + 50 * step)
        for agent, tool in (("coder", "search"), ("chat", "calc"))
        for step, called in enumerate((tool, tool, None, tool))
    ]
    truth = np.array([LENGTHS[q.agent, q.tool] for q in queries], dtype=float)
    learned_mae = float(np.mean(np.abs(model.predict(queries) - truth)))
    global_mae = float(np.mean(np.abs(truth.mean() - truth)))
    assert learned_mae < 0.25 * global_mae, (learned_mae, global_mae)

    assert main(["predictor", "eval", *data, "--model", str(tmp_path / "store")]) == 0
    assert "learned" in capsys.readouterr().out


def test_training_groups_are_sessions(tmp_path: Path) -> None:
    from tool_registry.training import training_records

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    record_sessions(url, tmp_path / "spill", sessions=3)
    with tool_registry.ToolRegistry(url, spill_dir=tmp_path / "spill") as registry:
        registry.record_turn(agent="solo", step=0, output_tokens=9, prompt_text="hi")
    records = training_records(url)
    assert len(records) == 13
    assert {r.group for r in records if r.agent != "solo"} == {
        "session:chat-0",
        "session:coder-1",
        "session:chat-2",
    }
    (solo,) = [r for r in records if r.agent == "solo"]
    assert solo.group.startswith("turn:") and solo.prompt_tokens == 0 and solo.prompt_text == "hi"
    assert len(training_records(url, agent="solo")) == 1
