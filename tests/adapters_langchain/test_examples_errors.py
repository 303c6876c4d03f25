"""The example apps stop with one line, before any agent runs, on an unreachable endpoint or
registry, and do not create a registry folder nobody asked for."""

from __future__ import annotations

import importlib
import socket
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.langchain
pytest.importorskip("langchain")
pytest.importorskip("tool_registry")

ROOT = Path(__file__).resolve().parents[2]


def math_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    return importlib.import_module("math_agent")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line_exit(app: ModuleType, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        app.main(args)
    assert done.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "solved" not in captured.out  # stopped before any agent ran
    return err


def test_a_sqlite_registry_in_a_missing_folder_is_refused_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = math_app(monkeypatch)
    db = tmp_path / "typo" / "registry.db"
    err = one_line_exit(app, ["--registry", f"sqlite:///{db}", "--limit", "1"], capsys)
    assert f"folder {db.parent} does not exist" in err and "--create-registry" in err
    assert not db.parent.exists()
    assert app.main(["--registry", f"sqlite:///{db}", "--limit", "1", "--create-registry"]) == 0
    assert db.exists()


def test_an_unreachable_base_url_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    err = one_line_exit(math_app(monkeypatch), ["--base-url", url, "--limit", "1"], capsys)
    assert f"--base-url {url}: cannot connect" in err


def test_an_unreachable_registry_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
    url = f"postgresql://user:secret@127.0.0.1:{closed_port()}/db"
    err = one_line_exit(math_app(monkeypatch), ["--registry", url, "--limit", "1"], capsys)
    assert "cannot reach the tool registry database" in err and "secret" not in err


def test_the_examples_command_passes_create_registry_on(tmp_path: Path) -> None:
    from lamps_agent.cli.main import main

    db = tmp_path / "new" / "registry.db"
    assert main(["examples", "--only", "math", "--limit", "1",
                 "--registry", f"sqlite:///{db}", "--create-registry"]) == 0  # fmt: skip
    assert db.exists()
