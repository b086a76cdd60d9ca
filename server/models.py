"""The store's schema: SQLAlchemy 2.0 typed models.

- ``jobs``: one row per search job (spec, state, progress, lease, cancel flag, and what a RUNNING job is doing now:
  ``activity``, its driver's last report, with ``activity_at``).
- ``candidates``: one row per evaluated candidate, unique per (job, key), with the front-query columns
  (``quality``, ``bitops``, ``weight_bytes``, ``steps``, ``latency_ms`` where measured) as real columns, a stored
  non-dominated flag, and ``runtime``: the latest measurement of its export per run-time backend, where measured.
- ``objective_values``: one row per (candidate, objective name): every metric, core and extra.
- ``hypervolume_history``: one row per (job, generation).
- ``job_checkpoints``: the resumable checkpoint of a job's last stored generation (kept off the job row so listings
  never read it).

Timestamps are naive UTC (the same on SQLite and PostgreSQL). The Alembic migrations in ``server/migrations``
create exactly this schema (a test compares them).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from search.errors import NotFound

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as naive UTC (what every timestamp column holds)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JobState(str, enum.Enum):
    """Lifecycle of a job; the last three are terminal and never change."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints the same on every backend."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobModel(Base):
    """A search job."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's own attribute; ids never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    submission_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True, default=JobState.PENDING.value)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    generation: Mapped[int | None] = mapped_column(Integer)
    evaluated: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    front_size: Mapped[int] = mapped_column(Integer, default=0)
    results_version: Mapped[int] = mapped_column(Integer, default=0)
    hypervolume: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    activity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    activity_at: Mapped[datetime | None] = mapped_column(DateTime)
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    fp_references: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    @classmethod
    def find_or_raise(cls, session: Session, job_id: int, *, for_update: bool = False) -> JobModel:
        """The job with this id, or :class:`NotFound`."""
        stmt = select(cls).where(cls.id == job_id)
        if for_update:
            stmt = stmt.with_for_update()
        job = session.scalars(stmt).one_or_none()
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    @classmethod
    def find_by_submission(cls, session: Session, submission_id: str) -> JobModel | None:
        """The job submitted with this client-chosen id, if any."""
        return session.scalars(select(cls).where(cls.submission_id == submission_id)).one_or_none()


class CandidateModel(Base):
    """One evaluated candidate of a job."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("job_id", "key"),
        Index("ix_candidates_front", "job_id", "non_dominated", "bitops"),
        Index("ix_candidates_job_quality", "job_id", "quality"),
        Index("ix_candidates_job_seq", "job_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    candidate: Mapped[dict[str, Any]] = mapped_column(JSON)
    bits: Mapped[str] = mapped_column(String(32))
    steps: Mapped[int] = mapped_column(Integer)
    quality: Mapped[float | None] = mapped_column(Float)
    bitops: Mapped[float | None] = mapped_column(Float)
    weight_bytes: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    feasible: Mapped[bool] = mapped_column(Boolean)
    non_dominated: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    runtime: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    @classmethod
    def find_or_raise(cls, session: Session, job_id: int, key: str) -> CandidateModel:
        """The candidate ``key`` of job ``job_id``, or :class:`NotFound`."""
        row = session.scalars(select(cls).where(cls.job_id == job_id, cls.key == key)).one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} has no candidate {key!r}")
        return row


class ObjectiveValueModel(Base):
    """One metric of one candidate (quality, bitops, weight_bytes, steps, and every numeric extra)."""

    __tablename__ = "objective_values"
    __table_args__ = (UniqueConstraint("candidate_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)


class HypervolumeModel(Base):
    """The hypervolume (and progress counters) after one generation."""

    __tablename__ = "hypervolume_history"
    __table_args__ = (UniqueConstraint("job_id", "generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    hypervolume: Mapped[float] = mapped_column(Float)
    evaluated: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    front_size: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CheckpointModel(Base):
    """The resumable checkpoint (opaque bytes) written with a job's last stored generation."""

    __tablename__ = "job_checkpoints"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
