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

from server.models import Base, utcnow
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
    assert [rev.revision for rev in script.walk_revisions()][::-1] == [
        "0001",
        "0002",
        "0003",
        "0004",
        "0005",
        "0006",
        "0007",
    ]


def test_0002_to_0004_add_activity_warnings_and_latency_and_keep_every_row_both_ways(empty_url: str) -> None:
    """A database at 0001 with a job and a candidate: upgraded, the job reads with no activity and no warnings and
    takes both, and the candidate has no latency; downgraded again, the columns go and nothing else does (no table
    copy, so no ON DELETE CASCADE)."""
    import sqlalchemy as sa

    from server.models import utcnow

    store = Store(empty_url, migrate=False)
    try:
        with store.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
        now = utcnow()
        jobs = sa.table(
            "jobs",
            *(sa.column(n) for n in ("spec_hash", "state", "cancel_requested", "evaluated", "failed", "front_size")),
            *(sa.column(n) for n in ("results_version", "attempts", "created_at", "updated_at")),
            sa.column("spec", sa.JSON),
        )
        candidates = sa.table(
            "candidates",
            *(sa.column(n) for n in ("job_id", "key", "generation", "bits", "steps", "feasible", "non_dominated")),
            *(sa.column(n) for n in ("created_at",)),
            sa.column("candidate", sa.JSON),
            sa.column("info", sa.JSON),
        )
        with store.engine.begin() as connection:
            job_id = connection.execute(
                jobs.insert()
                .values(spec_hash="h", spec={"version": 1, "model": "m"}, state="RUNNING", cancel_requested=False)
                .values(evaluated=1, failed=0, front_size=1, results_version=1, attempts=1)
                .values(created_at=now, updated_at=now)
                .returning(sa.column("id"))
            ).scalar_one()
            connection.execute(
                candidates.insert().values(
                    job_id=job_id, key="k", generation=0, bits="W8A8", steps=4, feasible=True, non_dominated=True,
                    created_at=now, candidate={"timesteps": [3, 2, 1, 0]}, info={},
                )
            )  # fmt: skip
        store.migrate()
        job = store.get_job(job_id)
        assert job.activity is None and job.activity_at is None and job.spec == {"version": 1, "model": "m"}
        assert store.set_activity(job_id, {"stage": "loading", "message": "m"}) is True
        assert store.get_job(job_id).activity == {"stage": "loading", "message": "m"}
        assert job.warnings == () and store.add_warning(job_id, "w") is True
        assert store.get_job(job_id).warnings == ("w",)
        (point,) = store.front(job_id).points
        assert point.key == "k" and point.latency_ms is None
        with store.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0001")
        columns = {c["name"] for c in inspect(store.engine).get_columns("jobs")}
        assert not {"activity", "activity_at", "warnings"} & columns and "spec" in columns
        assert "latency_ms" not in {c["name"] for c in inspect(store.engine).get_columns("candidates")}
        with store.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM candidates")).scalar_one() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 1
    finally:
        store.close()


def test_0005_to_0007_add_the_runtime_calibration_and_fp_reference_columns_and_keep_every_row_both_ways(
    empty_url: str,
) -> None:
    """A database at 0004 with a running job's candidate: upgraded, the candidate reads with no measurement and takes
    one, the job with no calibration summary and no FP references and takes both; downgraded again, the columns go
    and no job, candidate or objective value does."""
    import sqlalchemy as sa

    from search.candidate import Candidate
    from server.models import JobState
    from tests.server.fakes import fake_measurement

    store = Store(empty_url, migrate=False)
    try:
        with store.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0004")
        now = utcnow()
        jobs = sa.table(
            "jobs",
            *(sa.column(n) for n in ("spec_hash", "state", "cancel_requested", "evaluated", "failed", "front_size")),
            *(sa.column(n) for n in ("results_version", "attempts", "lease_owner", "created_at", "updated_at")),
            sa.column("spec", sa.JSON),
        )
        with store.engine.begin() as connection:  # the job as 0004 stores it, claimed by runner "r"
            job_id = connection.execute(
                jobs.insert()
                .values(spec_hash="h", spec={"version": 1, "model": "m"}, state="RUNNING", cancel_requested=False)
                .values(evaluated=1, failed=0, front_size=1, results_version=1, attempts=1, lease_owner="r")
                .values(created_at=now, updated_at=now)
                .returning(sa.column("id"))
            ).scalar_one()
        c = Candidate.uniform((75, 50, 25, 0), ("a.conv", "b.attn.qk"), 8, 8)
        candidates = sa.table(
            "candidates",
            *(sa.column(n) for n in ("id", "job_id", "key", "generation", "bits", "steps", "quality", "bitops")),
            *(sa.column(n) for n in ("weight_bytes", "feasible", "non_dominated", "created_at")),
            sa.column("candidate", sa.JSON),
            sa.column("info", sa.JSON),
        )
        values = sa.table("objective_values", sa.column("candidate_id"), sa.column("name"), sa.column("value"))
        with store.engine.begin() as connection:  # the candidate as 0004 stores it (the model has a newer column)
            candidate_id = connection.execute(
                candidates.insert()
                .values(job_id=job_id, key=c.key(), generation=0, bits="W8A8", steps=4, quality=0.1, bitops=1e9)
                .values(weight_bytes=100.0, feasible=True, non_dominated=True, created_at=now)
                .values(candidate=c.to_dict(), info={})
                .returning(sa.column("id"))
            ).scalar_one()
            connection.execute(values.insert().values(candidate_id=candidate_id, name="quality", value=0.1))
        store.migrate()
        assert store.schema_revision() == "0007"
        assert store.get_candidate(job_id, c.key()).runtime is None
        assert store.get_job(job_id).calibration is None
        assert store.set_calibration(job_id, {"source": "cache"}, owner="r") is True
        assert store.front(job_id).fp_references == ()
        store.set_fp_references(job_id, [{"steps": 4, "mse": 0.01}], owner="r")
        assert store.front(job_id).fp_references == ({"steps": 4, "mse": 0.01},)
        store.finish_job(job_id, "r", JobState.SUCCEEDED)
        assert store.get_job(job_id).calibration == {"source": "cache"}
        measured = store.set_runtime(job_id, c.key(), "cpu-int8", fake_measurement(steps=4))
        assert measured.runtime == {"cpu-int8": fake_measurement(steps=4)}
        assert measured.objectives == {"quality": 0.1} and measured.candidate == c.to_dict()
        with store.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0004")
        assert "runtime" not in {col["name"] for col in inspect(store.engine).get_columns("candidates")}
        assert not {"calibration", "fp_references"} & {col["name"] for col in inspect(store.engine).get_columns("jobs")}
        with store.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM candidates")).scalar_one() == 1
            assert connection.execute(sa.text("SELECT count(*) FROM objective_values")).scalar_one() == 1
    finally:
        store.close()
