"""Alembic environment of the tool registry.

The registry runs migrations programmatically (``tool_registry.schema``), passing an open
connection in ``config.attributes["connection"]``.  Run from the ``alembic`` command line
(``alembic -c tool_registry/alembic.ini -x url=sqlite:///registry.db upgrade head``) it opens a
synchronous engine on ``-x url=...`` itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from tool_registry.models import Base
from tool_registry.schema import VERSION_TABLE

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sync_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database with: alembic -x url=sqlite:///registry.db ...")
    return url.replace("+aiosqlite", "").replace("+asyncpg", "")


if context.is_offline_mode():
    context.configure(
        url=_sync_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    engine = create_engine(_sync_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
