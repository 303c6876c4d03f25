"""The adapter tests need the ``langchain`` extra: each module starts with
``pytest.importorskip("langchain")``, so without it they are reported as skipped, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _default_registry_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples record into the default registry when given none: keep that out of the real
    home directory."""
    monkeypatch.setenv("LAMPS_REGISTRY_URL", f"sqlite:///{tmp_path}/default-registry.db")
