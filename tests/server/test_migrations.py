"""The Alembic migrations build exactly the schema of the models, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from server.models import Base
from server.store import Store, alembic_config
from tests.server.conftest import BACKENDS, fresh_pg_database, require_postgres


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    require_postgres()
    with fresh_pg_database() as url:
        yield url


def test_migrations_from_empty_to_head_match_the_models(empty_url: str) -> None:
    store = Store(empty_url, migrate=False)
    try:
        assert inspect(store.engine).get_table_names() == []
        store.migrate()
        store.migrate()  # idempotent
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert store.schema_revision() == head
        with store.engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
        assert diffs == []
        assert set(inspect(store.engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
        # and back down to nothing
        with store.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    finally:
        store.close()


def test_migration_scripts_ship_inside_the_package() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    location = Path(script.dir)
    assert location == Path(__file__).resolve().parents[2] / "server" / "migrations"
    assert (location / "env.py").is_file() and (location / "script.py.mako").is_file()
    assert [rev.revision for rev in script.walk_revisions()][-1] == "0001"
