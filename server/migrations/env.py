"""Alembic environment: migrates the connection handed over in ``config.attributes["connection"]``.

Run by :meth:`server.store.Store.migrate`; without a connection (e.g. ``alembic revision --autogenerate`` driven from
Python) it opens the database named by :class:`server.settings.Settings`.
"""

from __future__ import annotations

from alembic import context

from server.models import Base

target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the given connection, or the configured database."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from server.settings import Settings
    from server.store import create_store_engine

    engine = create_store_engine(Settings().resolved_database_url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()
