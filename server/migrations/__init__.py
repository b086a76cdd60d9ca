"""Alembic migrations of the store, run programmatically by :meth:`server.store.Store.migrate`."""
