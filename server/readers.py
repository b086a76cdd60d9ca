"""Non-blocking readers of a job's ``results_version`` for the API's event loop (the front's hot path).

The front cache checks the version on every request. Going through a worker thread costs more than the read itself,
so the event loop reads it directly, on a connection of the reader's own:

- SQLite: a local primary-key read takes microseconds and, in WAL mode, never waits for a writer; it runs inline.
- PostgreSQL (psycopg 3): an ``AsyncConnection`` in autocommit mode, awaited, so a slow server never blocks the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from search.errors import NotFound, StoreError

_SQL = "SELECT results_version FROM jobs WHERE id = {}"


class VersionReader(Protocol):
    """``await reader(job_id)`` → the job's ``results_version`` (NotFound, StoreError); ``await reader.aclose()``."""

    async def __call__(self, job_id: int) -> int: ...

    async def aclose(self) -> None: ...


def _version(row: Any, job_id: int) -> int:
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return int(row[0])


class SqliteVersionReader:
    """A dedicated SQLite connection read inline (use from one event loop)."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        import sqlite3

        self._errors = sqlite3.Error
        self._sql = _SQL.format("?")
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")

    async def __call__(self, job_id: int) -> int:
        try:
            row = self._connection.execute(self._sql, (int(job_id),)).fetchone()
        except self._errors as exc:
            raise StoreError(f"database error ({type(exc).__name__}): {exc}") from exc
        return _version(row, job_id)

    async def aclose(self) -> None:
        self._connection.close()


class PostgresVersionReader:
    """One psycopg ``AsyncConnection`` (autocommit), opened on first use in the running loop and re-opened after an
    error or when used from another loop."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._sql = _SQL.format("%s")
        self._connection: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def _usable(self, loop: asyncio.AbstractEventLoop) -> bool:
        return self._connection is not None and not self._connection.closed and self._loop is loop

    async def _connect(self) -> Any:
        import psycopg

        loop = asyncio.get_running_loop()
        if self._usable(loop):
            return self._connection
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop, self._connection = asyncio.Lock(), loop, None
        async with self._lock:  # one connection, however many requests arrive before it is open
            if not self._usable(loop):
                self._connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return self._connection

    async def __call__(self, job_id: int) -> int:
        import psycopg

        try:
            connection = await self._connect()
            cursor = await connection.execute(self._sql, (int(job_id),), prepare=True)
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            await self.aclose()
            raise StoreError(f"database error ({type(exc).__name__}): {exc}".splitlines()[0]) from exc
        return _version(row, job_id)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and self._loop is asyncio.get_running_loop():
            await connection.close()
