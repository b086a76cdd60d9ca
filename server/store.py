"""The SQL store of jobs, candidates, objective values, fronts and checkpoints (SQLite or PostgreSQL).

Every public method runs in one :meth:`Store.session` scope: it commits as a whole or rolls back as a whole, and
any database error becomes :class:`~search.errors.StoreError` (``NotFound`` / ``Conflict`` pass through).

SQLite (the embedded default) runs in WAL mode with a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing on a stale snapshot. Claims are atomic
conditional UPDATEs (``... WHERE state = 'PENDING'``), on PostgreSQL after ``SELECT ... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from search.candidate import Candidate
from search.errors import ConfigError, Conflict, InvalidCandidate, NotFound, StoreError
from search.evaluator import Evaluation
from server.models import (
    Base,
    CandidateModel,
    CheckpointModel,
    HypervolumeModel,
    JobModel,
    JobState,
    ObjectiveValueModel,
    utcnow,
)
from server.records import CandidatePage, CandidateRecord, FrontRecord, HypervolumePoint, JobPage, JobRecord
from workers.protocol import LeaseLost, ResumeState

if TYPE_CHECKING:
    from server.readers import VersionReader
    from server.settings import Settings

logger = logging.getLogger(__name__)

#: Metrics stored as real columns of the candidate row (and as objective rows).
CORE_OBJECTIVES = ("quality", "bitops", "weight_bytes", "steps", "latency_ms")

#: Columns the front may be sorted by.
FRONT_SORT_KEYS = ("bitops", "quality", "weight_bytes", "steps", "latency_ms")

#: Most warnings a job keeps, and the longest line of one.
MAX_WARNINGS = 50
MAX_WARNING_CHARS = 500
#: Largest stored activity report (its JSON, in bytes); a larger one is cut down by :func:`bounded_activity`.
MAX_ACTIVITY_BYTES = 4096
#: Keys of an activity report (``workers.protocol.Activity``) and of its calibration entry kept when it is cut down.
ACTIVITY_KEYS = ("stage", "message", "calibration")
CALIBRATION_KEYS = (
    "source",
    "bits",
    "bit_index",
    "bit_count",
    "phase",
    "round",
    "step",
    "total",
    "elapsed_s",
    "eta_s",
)
_ACTIVITY_TEXT = 500
#: Largest stored run-time measurement of one backend (its JSON, in bytes; a ``RuntimeMeasurement`` takes ~500).
MAX_RUNTIME_BYTES = 4096
#: Largest stored calibration summary of a job (its JSON, in bytes).
MAX_CALIBRATION_BYTES = 16384
#: Largest FP reference list stored with a job (``Store.set_fp_references``), as JSON.
MAX_FP_REFERENCES_BYTES = 262_144
#: Longest run-time backend name a measurement is stored under.
MAX_BACKEND_CHARS = 32

_CHUNK = 500
_MIGRATION_LOCK_ID = 0x746D7071  # "tmpq": PostgreSQL advisory lock key held while migrating

#: Set while a write session is open: the SQLite "begin" hook then emits BEGIN IMMEDIATE.
_WRITE_TX: contextvars.ContextVar[bool] = contextvars.ContextVar("tmpq_store_write_tx", default=False)

_JOB_COLUMNS = tuple(JobModel.__table__.columns)
#: What a job leaving RUNNING (or claimed anew) gets: no activity (it describes a running job only).
_NO_ACTIVITY: dict[str, Any] = {"activity": null(), "activity_at": None}  # SQL NULL, not the JSON null
_CANDIDATE_COLUMNS = tuple(CandidateModel.__table__.columns)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """SHA-256 of a spec's canonical JSON: the identity compared for a repeated ``submission_id``."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _finite(value: Any) -> float | None:
    """A float, or None for NaN/inf/None (NaN is not portable across backends)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """JSON for what ``json`` cannot write: a numpy scalar's Python value, else the text."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            plain = item()
        except (TypeError, ValueError):
            return str(value)
        if isinstance(plain, float) and not math.isfinite(plain):
            return None
        if isinstance(plain, str | int | float | bool) or plain is None:
            return plain
    return str(value)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _json_mapping(value: Any, field: str, limit: int) -> dict[str, Any]:
    """``value`` as stored: a JSON-safe copy of a mapping of at most ``limit`` bytes of JSON, else
    :class:`ConfigError` naming ``field``."""
    if not isinstance(value, Mapping):
        raise ConfigError(field, f"must be a mapping, got {type(value).__name__}")
    try:
        stored = json.loads(json.dumps(_json_safe(value), default=_plain))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(field, f"is not JSON-ready: {exc}") from None
    if _json_size(stored) > limit:
        raise ConfigError(field, f"takes more than {limit} bytes of JSON")
    return stored


def bounded_activity(activity: Mapping[str, Any]) -> dict[str, Any]:
    """An activity report as stored: JSON-safe (non-finite floats become null, keys strings), and at most
    :data:`MAX_ACTIVITY_BYTES` of JSON. A larger one loses its extra keys first (those not in :data:`ACTIVITY_KEYS`
    and :data:`CALIBRATION_KEYS`), then its strings are shortened, and last its calibration entry goes."""
    try:
        safe = json.loads(json.dumps(_json_safe(activity), default=_plain))
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. a report that holds itself
        return {"message": f"an unreadable activity report ({type(exc).__name__})"}
    if not isinstance(safe, dict):
        return {}
    if _json_size(safe) <= MAX_ACTIVITY_BYTES:
        return safe
    core = {k: safe[k] for k in ACTIVITY_KEYS if k in safe}
    calibration = core.get("calibration")
    if isinstance(calibration, dict):
        core["calibration"] = {k: calibration[k] for k in CALIBRATION_KEYS if k in calibration}
    if _json_size(core) <= MAX_ACTIVITY_BYTES:
        return core
    short = {k: v[:_ACTIVITY_TEXT] if isinstance(v, str) else v for k, v in core.items()}
    if isinstance(short.get("calibration"), dict):
        cal = short["calibration"]
        short["calibration"] = {k: v[:_ACTIVITY_TEXT] if isinstance(v, str) else v for k, v in cal.items()}
    if _json_size(short) <= MAX_ACTIVITY_BYTES:
        return short
    return {k: short[k] for k in ("stage", "message") if isinstance(short.get(k), str)}


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def create_store_engine(url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 8) -> Engine:
    """An engine for ``url`` set up for the store (SQLite: WAL, busy timeout, foreign keys, BEGIN IMMEDIATE)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=pool_size, max_overflow=4 * pool_size)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise ConfigError("database_url", "in-memory SQLite is not supported; give a file path")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        pool_size=pool_size,
        max_overflow=4 * pool_size,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN (see _on_begin)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if _WRITE_TX.get() else "BEGIN")

    return engine


def alembic_config(connection: Any = None) -> Any:
    """An Alembic ``Config`` for the migrations shipped in ``server/migrations`` (no ``alembic.ini``)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


class Store:
    """Jobs, candidates and fronts in a SQL database.

    Args:
        url: SQLAlchemy URL (``sqlite:///path/to/tmpq.db`` or ``postgresql+psycopg://...``).
        busy_timeout_ms: SQLite only: how long a writer waits for the lock.
        migrate: upgrade the schema to the newest migration first (idempotent, safe from several processes).
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, migrate: bool = True) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self.engine = create_store_engine(url, busy_timeout_ms=busy_timeout_ms)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        marker = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        self._version_sql = f"SELECT results_version FROM jobs WHERE id = {marker}"
        if migrate:
            self.migrate()

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """The store named by :class:`server.settings.Settings` (``database_url`` or SQLite in ``data_dir``)."""
        return cls(settings.resolved_database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms, migrate=migrate)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- plumbing ---------------------------------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session whose transaction commits when the block ends and rolls back on any exception.

        Database errors become :class:`StoreError`. ``write=True`` takes SQLite's write lock up front.
        """
        token = _WRITE_TX.set(write)
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0]
            raise StoreError(f"database error ({type(exc).__name__}): {reason}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            _WRITE_TX.reset(token)

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration (a no-op when it is current)."""
        from alembic import command

        try:
            token = _WRITE_TX.set(True)
            try:
                with self.engine.begin() as connection:
                    if self.dialect == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
                    command.upgrade(alembic_config(connection), "head")
            finally:
                _WRITE_TX.reset(token)
        except SQLAlchemyError as exc:
            raise StoreError(f"migrating the database failed: {exc}".splitlines()[0]) from exc

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at."""
        from alembic.runtime.migration import MigrationContext

        try:
            with self.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error ({type(exc).__name__}): {exc}".splitlines()[0]) from exc

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers."""
        with self.session() as session:
            session.execute(text("SELECT 1"))

    # -- jobs -------------------------------------------------------------------------------------------

    def create_job(self, spec: Mapping[str, Any], *, submission_id: str | None = None) -> tuple[JobRecord, bool]:
        """Store a new PENDING job; returns ``(job, created)``.

        With a ``submission_id`` already used: the same spec returns that job (``created`` False), another spec
        raises :class:`Conflict`.
        """
        digest = spec_hash(spec)
        for attempt in range(2):
            try:
                with self.session(write=True) as session:
                    if submission_id is not None:
                        existing = JobModel.find_by_submission(session, submission_id)
                        if existing is not None:
                            return self._same_submission(existing, digest), False
                    now = utcnow()
                    job = JobModel(
                        submission_id=submission_id,
                        spec_hash=digest,
                        spec=dict(spec),
                        state=JobState.PENDING.value,
                        cancel_requested=False,
                        evaluated=0,
                        failed=0,
                        front_size=0,
                        results_version=0,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                    session.add(job)
                    session.flush()
                    return JobRecord.from_row(_orm_row(job)), True
            except StoreError as exc:
                # Two submissions with one new submission_id raced; the loser reads the winner's job.
                if attempt == 0 and submission_id is not None and isinstance(exc.__cause__, IntegrityError):
                    continue
                raise
        raise StoreError("could not store the job")  # pragma: no cover - the loop returns or raises

    @staticmethod
    def _same_submission(job: JobModel, digest: str) -> JobRecord:
        if job.spec_hash != digest:
            raise Conflict(f"submission_id {job.submission_id!r} was already used for job {job.id} with another spec")
        return JobRecord.from_row(_orm_row(job))

    def get_job(self, job_id: int) -> JobRecord:
        """The job, or :class:`NotFound`."""
        with self.session() as session:
            return self._job(session, job_id)

    @staticmethod
    def _job(session: Session, job_id: int) -> JobRecord:
        row = session.execute(select(*_JOB_COLUMNS).where(JobModel.id == job_id)).mappings().one_or_none()
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        return JobRecord.from_row(row)

    def list_jobs(self, *, states: Iterable[JobState | str] | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        """Jobs, newest first, optionally only those in ``states``."""
        wanted = [JobState(s).value for s in states] if states else None
        with self.session() as session:
            where = [JobModel.state.in_(wanted)] if wanted else []
            total = session.scalar(select(func.count()).select_from(JobModel).where(*where)) or 0
            rows = session.execute(
                select(*_JOB_COLUMNS).where(*where).order_by(JobModel.id.desc()).limit(limit).offset(offset)
            ).mappings()
            return JobPage(tuple(JobRecord.from_row(r) for r in rows), total, limit, offset)

    def cancel_job(self, job_id: int) -> JobRecord:
        """Cancel a job: PENDING becomes CANCELLED at once; RUNNING gets its cancel flag (the runner stops it after
        the current generation). CANCELLED is returned unchanged; SUCCEEDED or FAILED raise :class:`Conflict`."""
        with self.session(write=True) as session:
            now = utcnow()
            session.execute(
                update(JobModel)
                .where(JobModel.id == job_id, JobModel.state == JobState.PENDING.value)
                .values(state=JobState.CANCELLED.value, finished_at=now, updated_at=now, cancel_requested=True)
            )
            session.execute(
                update(JobModel)
                .where(
                    JobModel.id == job_id,
                    JobModel.state == JobState.RUNNING.value,
                    JobModel.cancel_requested.is_(False),
                )
                .values(cancel_requested=True, updated_at=now)
            )
            job = self._job(session, job_id)
            if job.state in (JobState.SUCCEEDED, JobState.FAILED):
                raise Conflict(f"job {job_id} is already {job.state.value}; a finished job never changes")
            return job

    def delete_job(self, job_id: int) -> None:
        """Delete a terminal job with everything stored for it; :class:`Conflict` if it is not terminal."""
        with self.session(write=True) as session:
            job = self._job(session, job_id)
            if not job.terminal:
                raise Conflict(f"job {job_id} is {job.state.value}; only a finished job can be deleted (cancel it)")
            candidate_ids = select(CandidateModel.id).where(CandidateModel.job_id == job_id).scalar_subquery()
            session.execute(delete(ObjectiveValueModel).where(ObjectiveValueModel.candidate_id.in_(candidate_ids)))
            for model in (CandidateModel, HypervolumeModel, CheckpointModel):
                session.execute(delete(model).where(model.job_id == job_id))
            session.execute(delete(JobModel).where(JobModel.id == job_id))

    # -- the runner's side ------------------------------------------------------------------------------

    def claim_job(self, owner: str, lease_seconds: float) -> JobRecord | None:
        """Atomically take the oldest claimable job for ``owner``: a PENDING one, or a RUNNING one whose lease
        expired (its runner died; it resumes from its last stored generation). None when there is none.

        Also finishes, as CANCELLED, RUNNING jobs with a cancel request whose lease expired.
        """
        claimable = or_(
            JobModel.state == JobState.PENDING.value,
            and_(JobModel.state == JobState.RUNNING.value, JobModel.lease_expires_at < utcnow()),
        )
        with self.session() as session:  # a read first: idle polling never takes SQLite's write lock
            if session.execute(select(JobModel.id).where(claimable).limit(1)).first() is None:
                return None
        with self.session(write=True) as session:
            now = utcnow()
            expired = and_(JobModel.state == JobState.RUNNING.value, JobModel.lease_expires_at < now)
            session.execute(
                update(JobModel)
                .where(expired, JobModel.cancel_requested.is_(True))
                .values(
                    state=JobState.CANCELLED.value,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **_NO_ACTIVITY,
                )
            )
            for _ in range(8):
                pick = (
                    select(JobModel.id, JobModel.state, JobModel.lease_owner)
                    .where(or_(JobModel.state == JobState.PENDING.value, expired))
                    .order_by(JobModel.id)
                    .limit(1)
                )
                if self.dialect == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                found = session.execute(pick).one_or_none()
                if found is None:
                    return None
                if found.state == JobState.PENDING.value:
                    condition = JobModel.state == JobState.PENDING.value
                else:
                    logger.warning("taking over job %d from %s (lease expired)", found.id, found.lease_owner)
                    condition = and_(expired, JobModel.lease_owner == found.lease_owner)
                claimed = session.execute(
                    update(JobModel)
                    .where(JobModel.id == found.id, condition)
                    .values(
                        state=JobState.RUNNING.value,
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                        attempts=JobModel.attempts + 1,
                        started_at=func.coalesce(JobModel.started_at, now),
                        updated_at=now,
                        **_NO_ACTIVITY,  # a takeover does not show what the previous runner was doing
                    )
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:
                    return self._job(session, found.id)
            return None

    def renew_leases(self, owner: str, job_ids: Iterable[int], lease_seconds: float) -> dict[int, bool]:
        """Extend ``owner``'s leases on ``job_ids``; returns ``{job_id: cancel_requested}`` for the jobs it still
        holds (the others were lost)."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.session(write=True) as session:
            now = utcnow()
            mine = and_(JobModel.id.in_(ids), JobModel.lease_owner == owner, JobModel.state == JobState.RUNNING.value)
            session.execute(
                update(JobModel)
                .where(mine)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .execution_options(synchronize_session=False)
            )
            rows = session.execute(select(JobModel.id, JobModel.cancel_requested).where(mine))
            return {job_id: bool(cancel) for job_id, cancel in rows}

    def set_activity(self, job_id: int, activity: Mapping[str, Any], *, owner: str | None = None) -> bool:
        """Store what a RUNNING job is doing now (a ``workers.protocol.Activity``, cut down to
        :data:`MAX_ACTIVITY_BYTES` by :func:`bounded_activity`) with the time, in one short transaction. It is
        cleared when the job leaves RUNNING (finished, released, or taken over by another runner).

        Returns False, storing nothing, when the job is not RUNNING (under ``owner``'s lease, when given); raises
        :class:`NotFound` for an unknown job.
        """
        stored = bounded_activity(activity)
        with self.session(write=True) as session:
            held = [JobModel.id == job_id, JobModel.state == JobState.RUNNING.value]
            if owner is not None:
                held.append(JobModel.lease_owner == owner)
            done = session.execute(
                update(JobModel)
                .where(*held)
                .values(activity=stored, activity_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 1:
                return True
            self._job(session, job_id)  # NotFound first
            return False

    def add_warning(self, job_id: int, message: str, *, owner: str | None = None) -> bool:
        """Append one line to a RUNNING job's ``warnings`` (under ``owner``'s lease, when given), unless it is
        there already; kept for good. A line is cut to :data:`MAX_WARNING_CHARS`, and a job keeps at most
        :data:`MAX_WARNINGS` of them.

        Returns False, storing nothing, when the job is not RUNNING (or not ``owner``'s); :class:`NotFound` for an
        unknown job.
        """
        line = " ".join(str(message).split())[:MAX_WARNING_CHARS]
        with self.session(write=True) as session:
            job = self._job(session, job_id)
            if job.state != JobState.RUNNING or (owner is not None and job.lease_owner != owner):
                return False
            if line not in job.warnings and len(job.warnings) < MAX_WARNINGS:
                session.execute(
                    update(JobModel)
                    .where(JobModel.id == job_id)
                    .values(warnings=[*job.warnings, line])
                    .execution_options(synchronize_session=False)
                )
            return True

    def set_calibration(self, job_id: int, summary: Mapping[str, Any], *, owner: str | None = None) -> bool:
        """Store the summary of a RUNNING job's calibrated supernet (under ``owner``'s lease, when given), replacing
        any earlier one; kept after the job ends.

        Returns False, storing nothing, when the job is not RUNNING (or not ``owner``'s); :class:`NotFound` for an
        unknown job; :class:`ConfigError` when ``summary`` is not a JSON-ready mapping of at most
        :data:`MAX_CALIBRATION_BYTES`.
        """
        stored = _json_mapping(summary, "calibration", MAX_CALIBRATION_BYTES)
        with self.session(write=True) as session:
            held = [JobModel.id == job_id, JobModel.state == JobState.RUNNING.value]
            if owner is not None:
                held.append(JobModel.lease_owner == owner)
            done = session.execute(
                update(JobModel).where(*held).values(calibration=stored).execution_options(synchronize_session=False)
            )
            if done.rowcount == 1:
                return True
            self._job(session, job_id)  # NotFound first
            return False

    def set_fp_references(
        self, job_id: int, points: Sequence[Mapping[str, Any]], *, owner: str | None = None
    ) -> JobRecord:
        """Store the FP reference points of a job's final front (``workers.driver.analyse_front``: the FP model on
        each of the front's schedules), replacing any earlier ones, and bump ``results_version`` so fronts served
        from a cache show them. Same lease rules as :meth:`record_generation`; :class:`ConfigError` when ``points``
        are not JSON-ready mappings of at most :data:`MAX_FP_REFERENCES_BYTES` in all."""
        if isinstance(points, str | bytes) or not isinstance(points, Sequence):
            raise ConfigError("fp_references", f"must be a list of points, got {type(points).__name__}")
        if not all(isinstance(p, Mapping) for p in points):
            raise ConfigError("fp_references", "each point must be a mapping")
        stored = _json_mapping({"points": [dict(p) for p in points]}, "fp_references", MAX_FP_REFERENCES_BYTES)
        with self.session(write=True) as session:
            now = utcnow()
            self._fence(session, job_id, owner, now)
            session.execute(
                update(JobModel)
                .where(JobModel.id == job_id)
                .values(fp_references=stored, updated_at=now, results_version=JobModel.results_version + 1)
                .execution_options(synchronize_session=False)
            )
            return self._job(session, job_id)

    def finish_job(self, job_id: int, owner: str, state: JobState, error: str | None = None) -> JobRecord:
        """End ``owner``'s RUNNING job as SUCCEEDED, FAILED or CANCELLED; :class:`LeaseLost` if not its owner."""
        if not JobState(state).terminal:
            raise ValueError(f"{state} is not a terminal state")
        with self.session(write=True) as session:
            now = utcnow()
            done = session.execute(
                update(JobModel)
                .where(JobModel.id == job_id, JobModel.state == JobState.RUNNING.value, JobModel.lease_owner == owner)
                .values(
                    state=JobState(state).value,
                    error=error,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **_NO_ACTIVITY,
                )
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:
                raise LeaseLost(f"job {job_id} is no longer held by runner {owner}")
            return self._job(session, job_id)

    def release_job(self, job_id: int, owner: str) -> JobRecord:
        """Give ``owner``'s RUNNING job back: PENDING again (CANCELLED if a cancel was requested), to be resumed
        from its last stored generation; :class:`LeaseLost` if ``owner`` does not hold it."""
        with self.session(write=True) as session:
            now = utcnow()
            held = and_(JobModel.id == job_id, JobModel.state == JobState.RUNNING.value, JobModel.lease_owner == owner)
            cancelled = session.execute(
                update(JobModel)
                .where(held, JobModel.cancel_requested.is_(True))
                .values(
                    state=JobState.CANCELLED.value,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **_NO_ACTIVITY,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            released = session.execute(
                update(JobModel)
                .where(held)
                .values(
                    state=JobState.PENDING.value,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    **_NO_ACTIVITY,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
            if cancelled + released != 1:
                raise LeaseLost(f"job {job_id} is no longer held by runner {owner}")
            return self._job(session, job_id)

    def record_generation(
        self,
        job_id: int,
        generation: int,
        evaluations: Sequence[tuple[Candidate, Evaluation]],
        front_keys: Iterable[str],
        hypervolume: float,
        checkpoint: bytes | None = None,
        *,
        evaluated: int | None = None,
        failed: int | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        """Store one generation in ONE transaction: its (candidate, evaluation) pairs (upserted by key, so recording
        a generation again after a resume neither duplicates nor fails), the front flags of the whole job, the
        hypervolume, the progress counters and the checkpoint.

        With ``owner``, the job must be RUNNING under that owner's lease (else :class:`LeaseLost`); without, it must
        not be terminal (else :class:`Conflict`). Returns the updated job (its
        ``cancel_requested`` says whether to stop).
        """
        front = list(dict.fromkeys(front_keys))
        with self.session(write=True) as session:
            now = utcnow()
            self._fence(session, job_id, owner, now)
            self._upsert_candidates(session, job_id, generation, evaluations, now)
            self._set_front(session, job_id, front)
            if evaluated is None or failed is None:
                counts = session.execute(
                    select(func.count(), func.sum(case((CandidateModel.feasible.is_(False), 1), else_=0))).where(
                        CandidateModel.job_id == job_id
                    )
                ).one()
                evaluated = counts[0] if evaluated is None else evaluated
                failed = int(counts[1] or 0) if failed is None else failed
            hv = _finite(hypervolume)
            hv = 0.0 if hv is None else hv
            self._upsert_hypervolume(session, job_id, generation, hv, evaluated, failed, len(front), now)
            if checkpoint is not None:
                self._upsert_checkpoint(session, job_id, generation, bytes(checkpoint), now)
            stored = session.scalar(select(JobModel.generation).where(JobModel.id == job_id))
            session.execute(
                update(JobModel)
                .where(JobModel.id == job_id)
                .values(
                    generation=generation if stored is None else max(stored, generation),
                    evaluated=evaluated,
                    failed=failed,
                    front_size=len(front),
                    hypervolume=hv,
                    updated_at=now,
                    results_version=JobModel.results_version + 1,
                )
                .execution_options(synchronize_session=False)
            )
            return self._job(session, job_id)

    def record_rescored(self, job_id: int, evaluations: Sequence[Evaluation], *, owner: str | None = None) -> JobRecord:
        """Add the metrics of a re-scoring (e.g. the final front's FDD at more samples: the evaluations' extras)
        to already stored candidates, in one transaction. Core columns (quality, BitOps, bytes) and the front
        flags do not change; a metric already stored under the same name is replaced. Same lease rules as
        :meth:`record_generation`."""
        with self.session(write=True) as session:
            now = utcnow()
            self._fence(session, job_id, owner, now)
            ids = self._candidate_ids(session, job_id, [e.key for e in evaluations])
            missing = [e.key for e in evaluations if e.key not in ids]
            if missing:
                raise InvalidCandidate(f"re-scored keys {missing[:5]} are not stored candidates of job {job_id}")
            for evaluation in evaluations:
                numeric, info = _split_extra(evaluation.extra)
                candidate_id = ids[evaluation.key]
                if numeric:
                    session.execute(
                        delete(ObjectiveValueModel).where(
                            ObjectiveValueModel.candidate_id == candidate_id,
                            ObjectiveValueModel.name.in_(list(numeric)),
                        )
                    )
                    session.execute(
                        insert(ObjectiveValueModel),
                        [{"candidate_id": candidate_id, "name": n, "value": _finite(v)} for n, v in numeric.items()],
                    )
                if info:
                    stored = session.scalar(select(CandidateModel.info).where(CandidateModel.id == candidate_id))
                    session.execute(
                        update(CandidateModel)
                        .where(CandidateModel.id == candidate_id)
                        .values(info={**(stored or {}), **_json_safe(info)})
                    )
            session.execute(
                update(JobModel)
                .where(JobModel.id == job_id)
                .values(updated_at=now, results_version=JobModel.results_version + 1)
                .execution_options(synchronize_session=False)
            )
            return self._job(session, job_id)

    def set_runtime(self, job_id: int, key: str, backend: str, measurement: Mapping[str, Any]) -> CandidateRecord:
        """Store what the candidate's export measured on ``backend`` (a
        ``supernet.runtime.measure.RuntimeMeasurement.to_dict()``) as its latest measurement there, keeping those of
        the other backends; returns the candidate with its ``runtime``.

        A measurement annotates a stored candidate, so it is allowed in any job state (a finished job's results do
        not change otherwise). The job's ``results_version`` goes up, so a cached front shows it.

        Raises:
            NotFound: no such job or candidate.
            ConfigError: ``backend`` is empty or longer than :data:`MAX_BACKEND_CHARS`, or ``measurement`` is not a
                JSON-ready mapping of at most :data:`MAX_RUNTIME_BYTES`.
        """
        if not isinstance(backend, str) or not 0 < len(backend) <= MAX_BACKEND_CHARS:
            raise ConfigError("backend", f"must be a name of 1 to {MAX_BACKEND_CHARS} characters, got {backend!r}")
        stored = _json_mapping(measurement, "measurement", MAX_RUNTIME_BYTES)
        with self.session(write=True) as session:
            # the job's row first, then the candidate's: the order record_generation locks them in (PostgreSQL)
            bumped = session.execute(
                update(JobModel)
                .where(JobModel.id == job_id)
                .values(results_version=JobModel.results_version + 1)
                .execution_options(synchronize_session=False)
            )
            if bumped.rowcount != 1:
                raise NotFound(f"job {job_id} does not exist")
            row = session.execute(
                select(CandidateModel.id, CandidateModel.runtime)
                .where(CandidateModel.job_id == job_id, CandidateModel.key == key)
                .with_for_update()
            ).one_or_none()
            if row is None:
                raise NotFound(f"job {job_id} has no candidate {key!r}")
            runtime = {**(row.runtime if isinstance(row.runtime, Mapping) else {}), backend: stored}
            session.execute(
                update(CandidateModel)
                .where(CandidateModel.id == row.id)
                .values(runtime=runtime)
                .execution_options(synchronize_session=False)
            )
            return self._load_candidates(session, select(*_CANDIDATE_COLUMNS).where(CandidateModel.id == row.id))[0]

    def _fence(self, session: Session, job_id: int, owner: str | None, now: Any) -> None:
        """Check the job may be written: held by ``owner`` (RUNNING), or not terminal when no owner is given."""
        if owner is None:
            job = self._job(session, job_id)
            if job.terminal:
                raise Conflict(f"job {job_id} is {job.state.value}; a finished job never changes")
            return
        held = session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.state == JobState.RUNNING.value, JobModel.lease_owner == owner)
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if held.rowcount != 1:
            self._job(session, job_id)  # NotFound first
            raise LeaseLost(f"job {job_id} is no longer held by runner {owner}")

    def _upsert_candidates(
        self, session: Session, job_id: int, generation: int, pairs: Sequence[tuple[Candidate, Evaluation]], now: Any
    ) -> None:
        rows: dict[str, dict[str, Any]] = {}
        objectives: dict[str, list[tuple[str, float | None]]] = {}
        for candidate, evaluation in pairs:
            key = candidate.key()
            if evaluation.key != key:
                raise InvalidCandidate(f"evaluation key {evaluation.key!r} does not match its candidate {key!r}")
            evaluation = evaluation.sanitized()
            numeric, info = _split_extra(evaluation.extra)
            rows[key] = {
                "job_id": job_id,
                "key": key,
                "generation": generation,
                "candidate": candidate.to_dict(),
                "bits": candidate.bits_summary()[:32],
                "steps": candidate.steps,
                "quality": _finite(evaluation.quality),
                "bitops": _finite(evaluation.bitops),
                "weight_bytes": _finite(evaluation.weight_bytes),
                "latency_ms": _finite(evaluation.latency_ms),
                "feasible": evaluation.ok,
                "error": evaluation.error,
                "info": _json_safe(info),
                "created_at": now,
            }
            objectives[key] = [
                ("quality", _finite(evaluation.quality)),
                ("bitops", _finite(evaluation.bitops)),
                ("weight_bytes", _finite(evaluation.weight_bytes)),
                ("steps", float(candidate.steps)),
                *([("latency_ms", evaluation.latency_ms)] if math.isfinite(evaluation.latency_ms) else []),
                *((name, _finite(value)) for name, value in sorted(numeric.items())),
            ]
        if not rows:
            return
        keys = list(rows)
        existing = self._candidate_ids(session, job_id, keys)
        new = [rows[k] for k in keys if k not in existing]
        for chunk in _chunks(new):
            session.execute(insert(CandidateModel), list(chunk))
        changed = [
            {
                "id": existing[k],
                **{c: v for c, v in rows[k].items() if c not in ("job_id", "key", "generation", "created_at")},
            }
            for k in keys
            if k in existing
        ]
        if changed:
            session.execute(update(CandidateModel), changed)
            for chunk in _chunks([row["id"] for row in changed]):
                session.execute(delete(ObjectiveValueModel).where(ObjectiveValueModel.candidate_id.in_(chunk)))
        ids = {**existing, **self._candidate_ids(session, job_id, [r["key"] for r in new])}
        values = [
            {"candidate_id": ids[key], "name": name, "value": value} for key in keys for name, value in objectives[key]
        ]
        for chunk in _chunks(values, 4 * _CHUNK):
            session.execute(insert(ObjectiveValueModel), list(chunk))

    @staticmethod
    def _candidate_ids(session: Session, job_id: int, keys: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(keys):
            rows = session.execute(
                select(CandidateModel.key, CandidateModel.id).where(
                    CandidateModel.job_id == job_id, CandidateModel.key.in_(chunk)
                )
            )
            found.update((key, cid) for key, cid in rows)
        return found

    def _set_front(self, session: Session, job_id: int, front: Sequence[str]) -> None:
        known = set(self._candidate_ids(session, job_id, front))
        missing = [k for k in front if k not in known]
        if missing:
            raise InvalidCandidate(f"front keys {missing[:5]} are not stored candidates of job {job_id}")
        session.execute(
            update(CandidateModel)
            .where(
                CandidateModel.job_id == job_id,
                CandidateModel.non_dominated.is_(True),
                CandidateModel.key.not_in(front) if front else True,
            )
            .values(non_dominated=False)
            .execution_options(synchronize_session=False)
        )
        for chunk in _chunks(front):
            session.execute(
                update(CandidateModel)
                .where(CandidateModel.job_id == job_id, CandidateModel.key.in_(chunk))
                .values(non_dominated=True)
                .execution_options(synchronize_session=False)
            )

    @staticmethod
    def _upsert_hypervolume(
        session: Session,
        job_id: int,
        generation: int,
        hv: float,
        evaluated: int,
        failed: int,
        front_size: int,
        now: Any,
    ) -> None:
        values = {
            "hypervolume": hv,
            "evaluated": evaluated,
            "failed": failed,
            "front_size": front_size,
            "recorded_at": now,
        }
        done = session.execute(
            update(HypervolumeModel)
            .where(HypervolumeModel.job_id == job_id, HypervolumeModel.generation == generation)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 0:
            session.execute(insert(HypervolumeModel).values(job_id=job_id, generation=generation, **values))

    @staticmethod
    def _upsert_checkpoint(session: Session, job_id: int, generation: int, data: bytes, now: Any) -> None:
        done = session.execute(
            update(CheckpointModel)
            .where(CheckpointModel.job_id == job_id)
            .values(generation=generation, data=data, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount == 0:
            session.execute(
                insert(CheckpointModel).values(job_id=job_id, generation=generation, data=data, updated_at=now)
            )

    def resume_state(self, job_id: int) -> ResumeState | None:
        """What a runner needs to resume the job: None if it never stored a generation."""
        with self.session() as session:
            job = self._job(session, job_id)
            if job.generation is None:
                return None
            ckpt = session.execute(
                select(CheckpointModel.generation, CheckpointModel.data).where(CheckpointModel.job_id == job_id)
            ).one_or_none()
            records = self._load_candidates(
                session, select(*_CANDIDATE_COLUMNS).where(CandidateModel.job_id == job_id).order_by(CandidateModel.id)
            )
            history = session.execute(
                select(HypervolumeModel.generation, HypervolumeModel.hypervolume)
                .where(HypervolumeModel.job_id == job_id)
                .order_by(HypervolumeModel.generation)
            ).all()
        hv = [math.nan] * (max((g for g, _ in history), default=-1) + 1)
        for g, value in history:
            hv[g] = value
        known = tuple((Candidate.from_dict(r.candidate), _evaluation(r)) for r in records)
        return ResumeState(
            last_generation=job.generation,
            checkpoint=bytes(ckpt.data) if ckpt is not None else None,
            checkpoint_generation=ckpt.generation if ckpt is not None else None,
            known=known,
            hypervolumes=tuple(hv),
        )

    # -- reads ------------------------------------------------------------------------------------------

    def front(
        self,
        job_id: int,
        *,
        max_bitops: float | None = None,
        max_steps: int | None = None,
        max_weight_bytes: float | None = None,
        max_quality: float | None = None,
        max_latency_ms: float | None = None,
        sort: str = "bitops",
        descending: bool = False,
    ) -> FrontRecord:
        """The job's current Pareto front (the stored non-dominated flag: an indexed read, no recomputation),
        restricted to the points within the given limits, sorted by ``sort`` (ties by key, missing values last).

        The limits select points of the whole job's front; a point dominated only by points outside the limits
        (e.g. by one with more steps) is not added.
        """
        if sort not in FRONT_SORT_KEYS:
            raise ConfigError("sort", f"must be one of {list(FRONT_SORT_KEYS)}, got {sort!r}")
        column = getattr(CandidateModel, sort)
        where = [CandidateModel.job_id == job_id, CandidateModel.non_dominated.is_(True)]
        for col, limit in (
            (CandidateModel.bitops, max_bitops),
            (CandidateModel.steps, max_steps),
            (CandidateModel.weight_bytes, max_weight_bytes),
            (CandidateModel.quality, max_quality),
            (CandidateModel.latency_ms, max_latency_ms),
        ):
            if limit is not None:
                where.append(col <= limit)
        order = ((column.desc() if descending else column.asc()).nulls_last(), CandidateModel.key)
        with self.session() as session:
            # the version first: under READ COMMITTED the points can only be newer than it, never older
            version = session.execute(
                select(JobModel.generation, JobModel.results_version, JobModel.fp_references).where(
                    JobModel.id == job_id
                )
            ).one_or_none()
            if version is None:
                raise NotFound(f"job {job_id} does not exist")
            points = self._load_candidates(session, select(*_CANDIDATE_COLUMNS).where(*where).order_by(*order))
            return FrontRecord(job_id, version[0], version[1], tuple(points), _reference_points(version[2]))

    def fp_references(self, job_id: int) -> tuple[dict[str, Any], ...]:
        """The FP reference points stored by :meth:`set_fp_references` (empty before); :class:`NotFound` for an
        unknown job."""
        with self.session() as session:
            row = session.execute(select(JobModel.fp_references).where(JobModel.id == job_id)).one_or_none()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            return _reference_points(row[0])

    def version_reader(self) -> VersionReader | None:
        """An event-loop reader of ``results_version`` with its own connection (see :mod:`server.readers`), or
        None when the driver has no non-blocking way (then callers use :meth:`results_version` in a thread)."""
        from server.readers import PostgresVersionReader, SqliteVersionReader

        if self.dialect == "sqlite":
            return SqliteVersionReader(str(self.engine.url.database), self.busy_timeout_ms)
        if self.dialect == "postgresql" and self.engine.url.get_driver_name() == "psycopg":
            conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            return PostgresVersionReader(conninfo)
        return None

    def results_version(self, job_id: int) -> int:
        """The job's ``results_version`` (one primary-key read, pre-compiled: this is on the front's hot path), or
        :class:`NotFound`."""
        try:
            with self.engine.connect() as connection:
                version = connection.exec_driver_sql(self._version_sql, (int(job_id),)).scalar_one_or_none()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error ({type(exc).__name__}): {exc}".splitlines()[0]) from exc
        if version is None:
            raise NotFound(f"job {job_id} does not exist")
        return version

    def list_candidates(
        self, job_id: int, *, after: int = 0, limit: int = 100, generation: int | None = None
    ) -> CandidatePage:
        """Candidates with ``seq > after`` in storage order (``after`` = the previous page's ``next_after``)."""
        with self.session() as session:
            self._job(session, job_id)
            where = [CandidateModel.job_id == job_id]
            if generation is not None:
                where.append(CandidateModel.generation == generation)
            total = session.scalar(select(func.count()).select_from(CandidateModel).where(*where)) or 0
            stmt = (
                select(*_CANDIDATE_COLUMNS)
                .where(*where, CandidateModel.id > after)
                .order_by(CandidateModel.id)
                .limit(limit + 1)
            )
            records = self._load_candidates(session, stmt)
        more = len(records) > limit
        records = records[:limit]
        return CandidatePage(tuple(records), total, records[-1].seq if more else None)

    def get_candidate(self, job_id: int, key: str) -> CandidateRecord:
        """One candidate of a job, or :class:`NotFound`."""
        with self.session() as session:
            stmt = select(*_CANDIDATE_COLUMNS).where(CandidateModel.job_id == job_id, CandidateModel.key == key)
            records = self._load_candidates(session, stmt)
            if not records:
                self._job(session, job_id)
                raise NotFound(f"job {job_id} has no candidate {key!r}")
            return records[0]

    def hypervolume_history(self, job_id: int) -> list[HypervolumePoint]:
        """Hypervolume and counters per stored generation, in generation order."""
        with self.session() as session:
            self._job(session, job_id)
            rows = session.execute(
                select(
                    HypervolumeModel.generation,
                    HypervolumeModel.hypervolume,
                    HypervolumeModel.evaluated,
                    HypervolumeModel.failed,
                    HypervolumeModel.front_size,
                    HypervolumeModel.recorded_at,
                )
                .where(HypervolumeModel.job_id == job_id)
                .order_by(HypervolumeModel.generation)
            )
            return [HypervolumePoint(*row) for row in rows]

    @staticmethod
    def _load_candidates(session: Session, stmt: Any) -> list[CandidateRecord]:
        rows = session.execute(stmt).mappings().all()
        if not rows:
            return []
        metrics: dict[int, dict[str, float | None]] = {row["id"]: {} for row in rows}
        for chunk in _chunks(list(metrics)):
            for cid, name, value in session.execute(
                select(ObjectiveValueModel.candidate_id, ObjectiveValueModel.name, ObjectiveValueModel.value).where(
                    ObjectiveValueModel.candidate_id.in_(chunk)
                )
            ):
                metrics[cid][name] = value
        return [
            CandidateRecord(
                seq=r["id"],
                job_id=r["job_id"],
                key=r["key"],
                generation=r["generation"],
                candidate=r["candidate"],
                bits=r["bits"],
                steps=r["steps"],
                quality=r["quality"],
                bitops=r["bitops"],
                weight_bytes=r["weight_bytes"],
                feasible=bool(r["feasible"]),
                non_dominated=bool(r["non_dominated"]),
                error=r["error"],
                latency_ms=r["latency_ms"],
                objectives=metrics[r["id"]],
                info=dict(r["info"] or {}),
                runtime=dict(r["runtime"]) if isinstance(r["runtime"], Mapping) else None,
            )
            for r in rows
        ]


def _reference_points(stored: Any) -> tuple[dict[str, Any], ...]:
    points = stored.get("points") if isinstance(stored, Mapping) else None
    return tuple(dict(p) for p in points if isinstance(p, Mapping)) if isinstance(points, list) else ()


def _split_extra(extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An evaluation's extras as (numeric metrics: objective rows, everything else: the ``info`` JSON)."""
    numeric = {
        str(name)[:64]: value
        for name, value in extra.items()
        if name not in CORE_OBJECTIVES and isinstance(value, int | float) and not isinstance(value, bool)
    }
    info = {name: value for name, value in extra.items() if str(name)[:64] not in numeric}
    return numeric, info


def _orm_row(obj: Any) -> dict[str, Any]:
    return {column.key: getattr(obj, column.key) for column in _JOB_COLUMNS}


def _evaluation(record: CandidateRecord) -> Evaluation:
    """The :class:`Evaluation` a stored candidate was recorded from."""
    extra: dict[str, Any] = dict(record.info)
    extra.update({k: (math.nan if v is None else v) for k, v in record.objectives.items() if k not in CORE_OBJECTIVES})
    nan = math.nan
    return Evaluation(
        key=record.key,
        quality=nan if record.quality is None else record.quality,
        bitops=nan if record.bitops is None else record.bitops,
        weight_bytes=nan if record.weight_bytes is None else record.weight_bytes,
        extra=extra,
        error=record.error,
        latency_ms=nan if record.latency_ms is None else record.latency_ms,
    )


__all__ = [
    "CORE_OBJECTIVES",
    "FRONT_SORT_KEYS",
    "MAX_ACTIVITY_BYTES",
    "MAX_RUNTIME_BYTES",
    "MAX_WARNINGS",
    "MAX_WARNING_CHARS",
    "Base",
    "Store",
    "alembic_config",
    "bounded_activity",
    "create_store_engine",
    "spec_hash",
]
