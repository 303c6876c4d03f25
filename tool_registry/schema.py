"""Creating and upgrading the registry schema with Alembic (``lamps-agent db upgrade``; also run on
first use).  The migrations live in ``tool_registry/migrations``; Alembic is configured in code."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tool_registry.errors import RegistryUnavailableError, SchemaTooNewError

if TYPE_CHECKING:
    from alembic.config import Config

HEAD_REVISION = "0002"  # the newest migration; tests check it matches migrations/versions
VERSION_TABLE = "tool_registry_version"  # not "alembic_version": a shared database may have others
_PG_LOCK_KEY = 0x6C616D7073  # serializes concurrent first uses on PostgreSQL
MIGRATION_LOCK_TIMEOUT_S = 30.0  # how long a migration waits for another one's advisory lock


def known_revisions() -> list[str]:
    """The revisions this version of the package can migrate from, oldest first."""
    versions = files("tool_registry") / "migrations" / "versions"
    return sorted(
        entry.name.split("_", 1)[0]
        for entry in versions.iterdir()
        if entry.name.endswith(".py") and entry.name[:4].isdigit()
    )


def alembic_config() -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations (imported lazily: Alembic is slow
    to import and only needed when the schema is behind)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("tool_registry") / "migrations"))
    return config


def current_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def _upgrade(conn: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def _check_revision(revision: str | None) -> bool:
    """Whether the schema needs migrating; a revision this package does not know (a newer
    lamps-agent migrated the database) is a clear error, not "cannot reach the database"."""
    if revision == HEAD_REVISION:
        return False
    if revision is not None and revision not in known_revisions():
        raise SchemaTooNewError(
            f"the registry database is at schema revision {revision!r}, which this lamps-agent "
            f"(newest known: {HEAD_REVISION}) does not know; upgrade lamps-agent"
        )
    return True


async def ensure_schema(engine: AsyncEngine) -> bool:
    """Bring the schema to the newest revision; returns whether anything was migrated.

    On PostgreSQL concurrent first uses are serialized by an advisory lock, taken only when a
    migration is needed and waited for at most ``MIGRATION_LOCK_TIMEOUT_S``."""
    async with engine.connect() as conn:
        if not _check_revision(await conn.run_sync(current_revision)):
            return False
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await _advisory_lock(conn)
        if not _check_revision(await conn.run_sync(current_revision)):
            return False
        await conn.run_sync(_upgrade)
        return True


async def _advisory_lock(conn: AsyncConnection) -> None:
    timeout_ms = int(MIGRATION_LOCK_TIMEOUT_S * 1000)
    await conn.execute(text(f"SET LOCAL lock_timeout = {timeout_ms}"))
    try:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    except DBAPIError as exc:
        if "lock timeout" not in str(exc).lower():
            raise
        raise RegistryUnavailableError(
            f"another session has held the registry's schema-migration lock (PostgreSQL advisory "
            f"lock {_PG_LOCK_KEY}) for more than {MIGRATION_LOCK_TIMEOUT_S:g} s: a migration still "
            "running, or a stuck session (see pg_locks where locktype = 'advisory')"
        ) from None
