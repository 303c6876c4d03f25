"""The Alembic migrations and the schema the models describe agree."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from tool_registry.schema import HEAD_REVISION, alembic_config


def test_head_revision_constant_matches_the_migrations() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_migrations_match_the_models(sqlite_url: str, tmp_path: object) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from tool_registry.models import Base
    from tool_registry.schema import VERSION_TABLE, _upgrade

    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        _upgrade(conn)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []
