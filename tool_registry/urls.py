"""Registry URLs: the zero-configuration default, sync-to-async driver mapping, password masking.

Masking never trusts a URL to be well formed: ``postgresql://u:se/cret@h/db``, ``...?password=x``
and ``postgresql:/u:secret@h`` all keep their secret out of every message (see :func:`redact`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

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


# A URL's scheme ("sqlite:", "postgresql:"); one letter is a Windows drive, so a path.
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


def resolve_url(url: str | None) -> str:
    """The async SQLAlchemy URL to use: ``url``, else ``$LAMPS_REGISTRY_URL``, else the SQLite file
    ``~/.lamps-agent/registry.db``.  Plain sync URLs are mapped to the async drivers; a plain file
    path (no scheme) is a SQLite file."""
    if url is None:
        url = os.environ.get(ENV_URL) or f"sqlite:///{DEFAULT_PATH.expanduser()}"
    if isinstance(url, str) and url and "://" not in url and not _URL_SCHEME.match(url):
        url = f"sqlite:///{Path(url).expanduser().absolute()}"
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            "registry URL must be a file path, 'sqlite:///file.db' or 'postgresql://...', got "
            f"{mask_password(url) if isinstance(url, str) else type(url).__name__!r}"
        )
    scheme, rest = url.split("://", 1)
    scheme = _ASYNC_DRIVERS.get(scheme.lower(), scheme)
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise ValueError(f"unsupported registry database {scheme!r}; use sqlite or postgresql")
    return f"{scheme}://{rest}"


# "scheme:" then any slashes (a malformed "postgresql:/u:p@h" too), then the credentials up to
# the LAST "@" of the authority: a password may hold "/", ":" or even "@".
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:/*)(?P<rest>.*)$", re.DOTALL)
# Query parameters that carry a secret (libpq's and the drivers' spellings).
_SECRET_QUERY = re.compile(
    r"(?P<key>(?:^|[?&;])[^=&;]*(?:password|passwd|pwd|secret|sslkey)[^=&;]*=)(?P<value>[^&;]*)",
    re.IGNORECASE,
)
MASK = "***"


def _split_credentials(url: str) -> tuple[str, str, str | None, str] | None:
    """``(scheme, user, password, after)`` of ``url`` (password ``None`` when absent), or ``None``
    when it has no credentials.  Tolerates malformed URLs: a secret must be found either way."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    scheme, rest = match["scheme"], match["rest"]
    query_at = rest.find("?")
    authority = rest if query_at < 0 else rest[:query_at]
    if "@" not in authority:
        return None
    credentials, _, host = authority.rpartition("@")
    after = host + ("" if query_at < 0 else rest[query_at:])
    user, colon, password = credentials.partition(":")
    return scheme, user, (password if colon else None), after


def secrets_of(url: str) -> list[str]:
    """Every secret ``url`` carries (the password, raw and percent-decoded, and secret query
    values), longest first: what must never be printed."""
    found: set[str] = set()
    parts = _split_credentials(url)
    if parts is not None and parts[2]:
        found.update({parts[2], unquote(parts[2])})
    for match in _SECRET_QUERY.finditer(url):
        if match["value"]:
            found.update({match["value"], unquote(match["value"])})
    return sorted((value for value in found if value), key=len, reverse=True)


def mask_password(url: str) -> str:
    """``url`` with every secret (the password, however it is written, and ``?password=``-style
    query values) replaced by ``***``.  Works on malformed URLs too."""
    parts = _split_credentials(url)
    if parts is not None and parts[2] is not None:
        scheme, user, _, after = parts
        url = f"{scheme}{user}:{MASK}@{after}"
    return _SECRET_QUERY.sub(lambda m: m["key"] + MASK, url)


def without_password(url: str) -> str:
    """``url`` with the secrets removed: the same database after a password rotation."""
    parts = _split_credentials(url)
    if parts is not None and parts[2] is not None:
        scheme, user, _, after = parts
        url = f"{scheme}{user}@{after}"
    return _SECRET_QUERY.sub(lambda m: m["key"], url)


def redact(message: str, url: str | None) -> str:
    """``message`` with every secret of ``url`` replaced by ``***``, and any other credentials of a
    URL-shaped word masked: for error messages and log lines that may quote a URL."""
    if url is not None:
        for secret in secrets_of(url):
            message = message.replace(secret, MASK)
    return " ".join(
        mask_password(word) if "@" in word or "=" in word else word for word in message.split(" ")
    )


def location(url: str | None) -> str:
    """Where the registry of ``url`` (as :func:`resolve_url` reads it) lives, for a message: the
    SQLite file, or the URL with its secrets masked."""
    resolved = resolve_url(url)
    if is_sqlite(resolved):
        path = sqlite_path(resolved)
        return str(path.expanduser()) if path is not None else "an in-memory SQLite database"
    return mask_password(resolved)


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
