"""Bad input is a clear ValueError at the call site; URLs are resolved and masked."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from tool_registry import ToolRegistry
from tool_registry.urls import mask_password, resolve_url


@pytest.fixture
def reg(sqlite_url: str, make_registry: Callable[..., ToolRegistry]) -> ToolRegistry:
    return make_registry(sqlite_url)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": -1.0}, "finite and >= 0"),
        ({"duration": math.nan}, "finite and >= 0"),
        ({"duration": math.inf}, "finite and >= 0"),
        ({"duration": "1.0"}, "number of seconds"),
        ({"duration": True}, "number of seconds"),
        ({"duration": 1e9}, "more than a week"),
        ({"duration": 1.0, "input_size": -5}, "input_size"),
        ({"duration": 1.0, "output_size": 10**15}, "output_size"),
        ({"duration": 1.0, "input_size": 1.5}, "input_size"),
        ({"duration": 1.0, "status": "maybe"}, "status"),
        ({"duration": 1.0, "started_at": math.nan}, "started_at"),
        ({"duration": 1.0, "session_id": "x" * 300}, "session_id"),
    ],
)
def test_record_rejects_bad_values(
    reg: ToolRegistry, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        reg.record("search", **kwargs)  # type: ignore[arg-type]
    assert reg.pending == 0


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, None, 42])
def test_record_rejects_bad_names(reg: ToolRegistry, name: object) -> None:
    with pytest.raises(ValueError, match="tool name"):
        reg.record(name, duration=1.0)  # type: ignore[arg-type]


def test_record_accepts_ints_and_enum_status(reg: ToolRegistry) -> None:
    reg.record("search", duration=2, status="error", error_type="Timeout", input_size=0)
    assert reg.pending == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_hint": -1.0}, "duration_hint"),
        ({"duration_hint": math.nan}, "duration_hint"),
        ({"name": ""}, "must not be empty"),
    ],
)
def test_register_rejects_bad_values(
    reg: ToolRegistry, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        reg.register(lambda q: q, **({"name": "t"} | kwargs))  # type: ignore[arg-type]


def test_register_lambda_needs_a_name(reg: ToolRegistry) -> None:
    with pytest.raises(ValueError, match="pass name="):
        reg.register(lambda q: q)


def test_registry_options_are_checked(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ToolRegistry(sqlite_url, batch_size=0)
    with pytest.raises(ValueError, match="flush_interval"):
        ToolRegistry(sqlite_url, flush_interval=math.nan)
    with pytest.raises(ValueError, match="unsupported"):
        ToolRegistry("mysql://u:p@h/db")


def test_urls_map_to_async_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert resolve_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert resolve_url("postgres://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    monkeypatch.setenv("LAMPS_REGISTRY_URL", "sqlite:///env.db")
    assert resolve_url(None) == "sqlite+aiosqlite:///env.db"
    monkeypatch.delenv("LAMPS_REGISTRY_URL")
    assert resolve_url(None).endswith(".lamps-agent/registry.db")


def test_a_plain_path_is_a_sqlite_file_and_a_malformed_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_url("reg.db") == f"sqlite+aiosqlite:///{tmp_path / 'reg.db'}"
    assert resolve_url("/abs/reg.db") == "sqlite+aiosqlite:////abs/reg.db"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_url("~/r.db") == f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    for bad in ("postgresql:/u:secret@h/db", "mysql:x", ""):
        with pytest.raises(ValueError, match="must be a file path") as info:
            resolve_url(bad)
        assert "secret" not in str(info.value)


def test_mask_password() -> None:
    assert mask_password("postgresql+asyncpg://bob:s3cr:et@h:5/db") == (
        "postgresql+asyncpg://bob:***@h:5/db"
    )
    assert mask_password("postgresql://bob@h/db") == "postgresql://bob@h/db"
    assert mask_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://rel:se/cret@h:1/db", "postgresql://rel:***@h:1/db"),
        ("postgresql://rel:a@b@h/db", "postgresql://rel:***@h/db"),
        ("postgresql://rel@h/db?password=secret&x=1", "postgresql://rel@h/db?password=***&x=1"),
        ("postgresql:/rel:secret@h/db", "postgresql:/rel:***@h/db"),
        ("postgresql://:pw@h/db", "postgresql://:***@h/db"),
        ("postgresql://u:pw@/db?host=/run/pg", "postgresql://u:***@/db?host=/run/pg"),
    ],
)
def test_mask_password_handles_every_form(url: str, masked: str) -> None:
    from tool_registry.urls import redact, without_password

    assert mask_password(url) == masked
    assert "***" not in without_password(url) and ":pw" not in without_password(url)
    assert redact(f"failed at {url}: boom", url) == f"failed at {masked}: boom"
