"""Without the extra or a saved model the core keeps working on the history estimator."""

from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Any

import pytest

import lamps_agent.predictors.learned.serve as serve
from lamps_agent.predictors import HistoryPredictor, PredictionQuery
from lamps_agent.predictors.learned import make_learned_predictor


def _query() -> PredictionQuery:
    return PredictionQuery(agent="a", step=0, tool="t", prompt_tokens=10, prompt_text="hi")


def test_missing_extra_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    monkeypatch.setattr(serve, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=serve.__name__):
        first = make_learned_predictor(str(tmp_path))
        second = make_learned_predictor(str(tmp_path))
    assert isinstance(first, HistoryPredictor) and isinstance(second, HistoryPredictor)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "extra" in caplog.records[0].getMessage()
    assert first.predict(_query()).output_tokens > 0


def test_missing_model_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(serve, "_warned", False)
    assert isinstance(make_learned_predictor(str(tmp_path / "empty")), HistoryPredictor)


def test_package_imports_without_torch_at_module_level() -> None:
    import sys

    import lamps_agent.predictors.learned  # noqa: F401

    # Importing the package and the CLI module must not pull torch in by itself.
    src = Path(serve.__file__).parent
    for path in [*src.glob("*.py"), src.parent.parent / "cli" / "predictor.py"]:
        top = [ln for ln in path.read_text().splitlines() if ln.startswith(("import ", "from "))]
        assert not any("torch" in ln or "transformers" in ln for ln in top), path
    assert "lamps_agent.predictors.learned" in sys.modules
