"""Fixtures of the server tests: one store contract run against every backend, as Optuna's
``testing/pytest_storages.py`` does.

- ``backend`` is parametrised over ``sqlite`` (a file in the test's tmp dir) and ``postgresql`` (marked
  ``postgres``): a fresh database is created for the test session on the local server's Unix socket and dropped at
  the end; each test starts from empty tables. Without a reachable server the PostgreSQL params skip with the
  reason, except when ``CI=true``: then they fail.
- ``store_url`` / ``store``: an empty, migrated store on that backend.
- ``model_root``: a directory holding a minimal (fake-weight) diffusers UNet2DModel checkpoint ``tiny-ddpm``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from server.models import Base
from server.store import Store

PG_SOCKET_DIR = os.environ.get("TMPQ_TEST_PG_HOST", "/var/run/postgresql")
PG_USER = os.environ.get("TMPQ_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("TMPQ_TEST_PG_DB", "test")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pg_url(database: str) -> str:
    """A SQLAlchemy URL for ``database`` on the local server's Unix socket."""
    return f"postgresql+psycopg://{PG_USER}@/{database}?host={PG_SOCKET_DIR}"


def _admin_connection():
    import psycopg

    return psycopg.connect(dbname=PG_ADMIN_DB, user=PG_USER, host=PG_SOCKET_DIR, autocommit=True, connect_timeout=3)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create an empty, uniquely named database; yield its URL; drop it afterwards."""
    name = f"tmpq_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        with _admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_postgres() -> None:
    """Skip (fail in CI) unless the PostgreSQL server answers on its socket."""
    try:
        with _admin_connection() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        reason = f"PostgreSQL is not reachable on {PG_SOCKET_DIR} as {PG_USER}/{PG_ADMIN_DB}: {exc}".splitlines()[0]
        if in_ci():
            pytest.fail(f"{reason} (mandatory when CI=true)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """One migrated PostgreSQL database for the whole session (dropped at the end)."""
    require_postgres()
    with fresh_pg_database() as url:
        store = Store(url)
        store.close()
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, copied for each test (migrating every time is slower)."""
    path = tmp_path_factory.mktemp("template") / "tmpq.db"
    Store(f"sqlite:///{path}").close()
    return path


def empty_tables(url: str) -> None:
    """Delete every row of a store (children first)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty, migrated database on ``backend``."""
    if backend == "sqlite":
        path = tmp_path / "store" / "tmpq.db"
        path.parent.mkdir()
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("pg_session_url")
    empty_tables(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    try:
        yield s
    finally:
        s.close()


def write_fake_model(
    path: Path,
    *,
    unet_class: str = "UNet2DModel",
    num_train_timesteps: int = 1000,
    weights: bool = True,
    scheduler: dict | None = None,
) -> Path:
    """A directory shaped like a diffusers DDPM checkpoint (the weights file holds no real tensors)."""
    (path / "unet").mkdir(parents=True)
    (path / "scheduler").mkdir()
    (path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDPMPipeline",
                "unet": ["diffusers", unet_class],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    (path / "unet" / "config.json").write_text(json.dumps({"_class_name": unet_class, "sample_size": 16}))
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": num_train_timesteps, **(scheduler or {})})
    )
    if weights:
        (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return path


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    """A model root with ``tiny-ddpm`` (valid) and a few broken neighbours."""
    root = tmp_path / "models"
    write_fake_model(root / "tiny-ddpm", num_train_timesteps=100)
    write_fake_model(root / "no-weights", weights=False)
    write_fake_model(root / "wrong-class", unet_class="UNet2DConditionModel")
    write_fake_model(root / "wrong-scheduler", scheduler={"_class_name": "EulerDiscreteScheduler"})
    write_fake_model(root / "v-prediction", scheduler={"prediction_type": "v_prediction"})
    (root / "not-a-model").mkdir()
    return root
