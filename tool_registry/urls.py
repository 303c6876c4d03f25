"""Registry URLs: the zero-configuration default, sync-to-async driver mapping, password masking."""

from __future__ import annotations

import os
from pathlib import Path

ENV_URL = "LAMPS_REGISTRY_URL"
DEFAULT_PATH = Path("~/.lamps-agent/registry.db")

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
}


def resolve_url(url: str | None) -> str:
    """The async SQLAlchemy URL to use: ``url``, else ``$LAMPS_REGISTRY_URL``, else the SQLite file
    ``~/.lamps-agent/registry.db``.  Plain sync URLs are mapped to the async drivers."""
    if url is None:
        url = os.environ.get(ENV_URL) or f"sqlite:///{DEFAULT_PATH.expanduser()}"
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"registry URL must look like 'sqlite:///file.db' or 'postgresql://...', got {url!r}"
        )
    scheme, rest = url.split("://", 1)
    scheme = _ASYNC_DRIVERS.get(scheme.lower(), scheme)
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise ValueError(f"unsupported registry database {scheme!r}; use sqlite or postgresql")
    return f"{scheme}://{rest}"


def mask_password(url: str) -> str:
    """``url`` with the password, if any, replaced by ``***``."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    credentials, host = netloc.rsplit("@", 1)
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}{sep}{tail}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for an in-memory database."""
    path = url.split("://", 1)[1]
    path = path[1:] if path.startswith("/") else path
    path = path.split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)
