"""Creating and upgrading the registry schema with Alembic (``lamps-agent db upgrade``; also run on
first use).  The migrations live in ``tool_registry/migrations``; Alembic is configured in code."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

HEAD_REVISION = "0002"  # the newest migration; tests check it matches migrations/versions
VERSION_TABLE = "tool_registry_version"  # not "alembic_version": a shared database may have others
_PG_LOCK_KEY = 0x6C616D7073  # serializes concurrent first uses on PostgreSQL


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


async def ensure_schema(engine: AsyncEngine) -> bool:
    """Bring the schema to the newest revision; returns whether anything was migrated."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        if await conn.run_sync(current_revision) == HEAD_REVISION:
            return False
        await conn.run_sync(_upgrade)
        return True
