"""The job runner: claims PENDING jobs, runs them through the search driver, records how they ended.

- Claims are atomic in the store (a conditional UPDATE; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so any number of
  runners, in any number of processes, never take the same job.
- Each claim is a lease (owner id + expiry). A heartbeat thread renews the leases of the jobs a runner holds every
  third of ``lease_seconds``; a runner that dies stops renewing, and once the lease has expired another runner
  takes the job over and resumes it from its last stored generation (:class:`~workers.protocol.ResumeState`).
- Up to ``runner_concurrency`` jobs run at once, each in its own thread, through ``execute`` (by default
  :func:`server.execution.execute_job`, which lazily imports ``workers.driver``).
- Cancellation is honoured between generations: the sink raises :class:`~workers.protocol.JobCancelled` after
  storing a generation of a job whose cancel flag is set.
- Stopping a runner (:meth:`JobRunner.stop`, SIGTERM in :func:`run_forever`) interrupts its jobs after their
  current generation and puts them back to PENDING, so another runner resumes them without waiting for the lease.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.candidate import Candidate
from search.errors import InvalidCandidate, StoreError, TmpqError
from search.evaluator import Evaluation
from server.execution import ExecuteFn, execute_job
from server.models import JobState
from server.records import JobRecord
from server.samples import samples_dir, write_samples
from server.settings import Settings
from server.store import Store
from workers.protocol import (
    GenerationRecord,
    JobCancelled,
    JobInterrupted,
    LeaseLost,
    ResumeState,
    RunnerStopping,
)

if TYPE_CHECKING:
    from workers.jobspec import JobSpec

logger = logging.getLogger(__name__)


def default_owner_id() -> str:
    """A runner identity unique across hosts, processes and runner instances: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _JobControl:
    """Flags shared between a job's thread, the heartbeat and :meth:`JobRunner.stop`."""

    job_id: int
    cancelled: bool = False
    lost: bool = False
    stopping: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)


class StoreJobSink:
    """The :class:`~workers.protocol.JobSink` a runner hands the driver: stores generations under its lease."""

    def __init__(
        self,
        store: Store,
        job_id: int,
        owner: str,
        control: _JobControl | None = None,
        *,
        data_dir: str | Path | None = None,
        created_at: str | None = None,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._owner = owner
        self._control = control if control is not None else _JobControl(job_id)
        self._data_dir = data_dir
        self._created_at = created_at
        self.interrupted: JobInterrupted | None = None
        if data_dir is None:  # without a place for them, the driver does not draw sample grids
            self.on_samples = None  # type: ignore[method-assign]

    @property
    def job_id(self) -> int:
        """The job's id in the store."""
        return self._job_id

    def on_generation(self, record: GenerationRecord) -> None:
        """Store the generation in one transaction, then raise :class:`JobInterrupted` if the job must stop."""
        pairs = _pairs(record.evaluations, record.candidates)
        try:
            job = self._store.record_generation(
                self._job_id,
                record.generation,
                pairs,
                record.front_keys,
                record.hypervolume,
                record.checkpoint,
                evaluated=record.evaluated,
                failed=record.failed,
                owner=self._owner,
            )
        except LeaseLost as exc:
            self._control.lost = True
            self.interrupted = self.interrupted or exc
            raise
        self._control.cancelled = self._control.cancelled or job.cancel_requested
        logger.info(
            "job %d: stored generation %d (%d new, %d evaluated, HV %.4f)",
            self._job_id,
            record.generation,
            len(pairs),
            job.evaluated,
            job.hypervolume or 0.0,
        )
        self.raise_if_interrupted()

    def on_rescored(self, evaluations: Sequence[Evaluation]) -> None:
        """Store the re-scoring metrics of front points (their extras), then raise if the job must stop."""
        try:
            self._store.record_rescored(self._job_id, list(evaluations), owner=self._owner)
        except LeaseLost as exc:
            self._control.lost = True
            self.interrupted = self.interrupted or exc
            raise
        logger.info("job %d: stored the re-scoring of %d front points", self._job_id, len(evaluations))
        self.raise_if_interrupted()

    def on_fp_references(self, points: Sequence[Mapping[str, Any]]) -> None:
        """Store the FP reference points of the final front (``GET /jobs/{id}/front``: ``fp_references``) under the
        job's lease, then raise if the job must stop."""
        try:
            self._store.set_fp_references(self._job_id, points, owner=self._owner)
        except LeaseLost as exc:
            self._control.lost = True
            self.interrupted = self.interrupted or exc
            raise
        logger.info("job %d: stored %d FP reference points", self._job_id, len(points))
        self.raise_if_interrupted()

    def on_samples(self, samples: Mapping[str, Any]) -> None:
        """Store the job's sample grids (``workers.samples``) under the data directory (``server.samples``), best
        effort: a write error is logged. Then raise :class:`JobInterrupted` if the job must stop."""
        assert self._data_dir is not None
        try:
            write_samples(samples_dir(self._data_dir, self._job_id), samples, self._created_at or "")
        except (OSError, ValueError) as exc:
            logger.warning("job %d: could not store its sample grids: %s", self._job_id, exc)
        self.raise_if_interrupted()

    def on_warning(self, message: str) -> None:
        """Keep a line the job warned about with the job (``GET /jobs/{id}``: ``warnings``), best effort like
        :meth:`on_progress`; then raise :class:`JobInterrupted` if the job must stop."""
        try:
            held = self._store.add_warning(self._job_id, message, owner=self._owner)
        except TmpqError as exc:
            logger.warning("job %d: could not store a warning: %s", self._job_id, exc)
        else:
            if not held:
                self._control.lost = True
        self.raise_if_interrupted()

    def on_calibration(self, summary: Mapping[str, Any]) -> None:
        """Keep the summary of the job's calibrated supernet with the job (``GET /jobs/{id}``: ``calibration``), best
        effort like :meth:`on_progress`; then raise :class:`JobInterrupted` if the job must stop."""
        try:
            held = self._store.set_calibration(self._job_id, summary, owner=self._owner)
        except TmpqError as exc:
            logger.warning("job %d: could not store its calibration summary: %s", self._job_id, exc)
        else:
            if not held:
                self._control.lost = True
        self.raise_if_interrupted()

    def on_progress(self, activity: Mapping[str, object]) -> None:
        """Store what the job is doing now (``workers.protocol.Activity``; shown by ``GET /jobs/{id}``), best
        effort: a storage error is logged, not raised. Then raise :class:`JobInterrupted` if the job must stop."""
        try:
            held = self._store.set_activity(self._job_id, activity, owner=self._owner)
        except TmpqError as exc:  # StoreError, or NotFound for a job deleted meanwhile
            logger.warning("job %d: could not store its activity: %s", self._job_id, exc)
        else:
            if not held:
                self._control.lost = True
        self.raise_if_interrupted()

    def raise_if_interrupted(self) -> None:
        """Raise if the job lost its lease, was cancelled, or this runner is stopping (checks cached flags)."""
        control = self._control
        exc: JobInterrupted | None = None
        if control.lost:
            exc = LeaseLost(f"job {self._job_id}: another runner holds it now")
        elif control.cancelled:
            exc = JobCancelled(f"job {self._job_id} was cancelled")
        elif control.stopping:
            exc = RunnerStopping(f"job {self._job_id}: runner {self._owner} is stopping")
        if exc is not None:
            self.interrupted = self.interrupted or exc  # remembered in case the driver swallows it
            raise exc


def _pairs(evaluations: object, candidates: Mapping[str, Candidate]) -> list[tuple[Candidate, Evaluation]]:
    pairs = []
    for evaluation in evaluations:  # type: ignore[attr-defined]
        candidate = candidates.get(evaluation.key)
        if candidate is None:
            raise InvalidCandidate(f"generation record has no candidate for evaluation {evaluation.key!r}")
        pairs.append((candidate, evaluation))
    return pairs


class JobRunner:
    """Claims and runs jobs from one store.

    Args:
        store: the store (shared with the API when both run in one process).
        settings: ``runner_concurrency``, ``lease_seconds``, ``poll_seconds``, ``ray_address``.
        execute: runs one job (default :func:`server.execution.execute_job`).
        owner: this runner's identity in leases (default :func:`default_owner_id`).
    """

    def __init__(
        self, store: Store, settings: Settings, *, execute: ExecuteFn | None = None, owner: str | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.execute: ExecuteFn = (
            execute
            if execute is not None
            else partial(execute_job, evaluator=settings.evaluator, ray_address=settings.ray_address)
        )
        self.owner = owner or default_owner_id()
        self._active: dict[int, _JobControl] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming jobs (a claim loop and a heartbeat, both daemon threads)."""
        if self._threads:
            raise RuntimeError("runner already started")
        logger.info(
            "runner %s: started (concurrency %d, lease %.0f s)",
            self.owner,
            self.settings.runner_concurrency,
            self.settings.lease_seconds,
        )
        self._threads.append(self._start_thread(self._claim_loop, "tmpq-runner-claim"))
        self._threads.append(self._start_thread(self._heartbeat_loop, "tmpq-runner-heartbeat", self._stop))

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop claiming; interrupt running jobs after their current generation (they go back to PENDING) and wait
        up to ``grace_seconds`` for them. A job still running after that keeps its lease until it expires."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            controls = list(self._active.values())
        for control in controls:
            control.stopping = True
        for control in controls:
            if control.thread is not None:
                control.thread.join(grace_seconds)
        for thread in self._threads:
            thread.join(grace_seconds)
        logger.info("runner %s: stopped", self.owner)

    @property
    def active_jobs(self) -> list[int]:
        """Ids of the jobs this runner is executing."""
        with self._lock:
            return sorted(self._active)

    def run_until_idle(self) -> int:
        """Claim and run jobs one after another in the calling thread until none is claimable; returns how many
        ran. (Handy for scripts and tests; :meth:`start` is the service mode.)"""
        count = 0
        done = threading.Event()
        heartbeat = self._start_thread(self._heartbeat_loop, "tmpq-runner-heartbeat", done)
        try:
            while not self._stop.is_set():
                job = self.store.claim_job(self.owner, self.settings.lease_seconds)
                if job is None:
                    break
                self._run(job, self._register(job.id))
                count += 1
        finally:
            done.set()
            heartbeat.join()
        return count

    # -- loops --------------------------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            claimed = False
            if len(self.active_jobs) < self.settings.runner_concurrency:
                try:
                    job = self.store.claim_job(self.owner, self.settings.lease_seconds)
                except TmpqError as exc:
                    logger.error("runner %s: claiming failed: %s", self.owner, exc)
                    job = None
                if job is not None:
                    claimed = True
                    self._spawn(job)
            if not claimed:
                self._wake.wait(self.settings.poll_seconds)

    @staticmethod
    def _start_thread(target: Callable[..., None], name: str, *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        interval = self.settings.lease_seconds / 3
        while not stop.wait(interval):
            self.heartbeat()

    def heartbeat(self) -> None:
        """Renew the leases of the running jobs; mark lost ones and pick up cancel requests."""
        with self._lock:
            controls = dict(self._active)
        if not controls:
            return
        try:
            held = self.store.renew_leases(self.owner, controls, self.settings.lease_seconds)
        except TmpqError as exc:
            logger.error("runner %s: renewing leases failed: %s", self.owner, exc)
            return
        for job_id, control in controls.items():
            if job_id not in held:
                if not control.lost:
                    logger.warning("runner %s: lost the lease on job %d", self.owner, job_id)
                control.lost = True
            elif held[job_id]:
                control.cancelled = True

    # -- one job ------------------------------------------------------------------------------------------

    def _register(self, job_id: int) -> _JobControl:
        control = _JobControl(job_id, stopping=self._stop.is_set())  # claimed while stopping: released at once
        with self._lock:
            self._active[job_id] = control
        return control

    def _spawn(self, job: JobRecord) -> None:
        control = self._register(job.id)
        thread = threading.Thread(target=self._run, args=(job, control), name=f"tmpq-job-{job.id}", daemon=True)
        control.thread = thread
        thread.start()

    def _run(self, job: JobRecord, control: _JobControl) -> None:
        sink = StoreJobSink(
            self.store,
            job.id,
            self.owner,
            control,
            data_dir=self.settings.data_dir,
            created_at=job.created_at.isoformat(),
        )
        try:
            logger.info("runner %s: running job %d (attempt %d)", self.owner, job.id, job.attempts)
            control.cancelled = job.cancel_requested
            sink.raise_if_interrupted()
            spec = self._spec(job)
            resume = self.store.resume_state(job.id)
            if resume is not None:
                logger.info("job %d: resuming after generation %d", job.id, resume.last_generation)
            self.execute(spec, sink, resume)
            if sink.interrupted is not None:  # the driver caught the interruption instead of letting it through
                raise sink.interrupted
            self._finish(job.id, JobState.SUCCEEDED)
        except JobCancelled:
            self._finish(job.id, JobState.CANCELLED)
        except LeaseLost:
            logger.warning("runner %s: dropped job %d (another runner holds it)", self.owner, job.id)
        except RunnerStopping:
            self._release(job.id)
        except Exception as exc:
            logger.exception("job %d failed", job.id)
            self._finish(job.id, JobState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._active.pop(job.id, None)
            self._wake.set()

    def _spec(self, job: JobRecord) -> JobSpec:
        from workers.jobspec import JobSpec

        return JobSpec.from_dict(job.spec)  # a stored version-1 spec is upgraded on read

    def _finish(self, job_id: int, state: JobState, error: str | None = None) -> None:
        try:
            self.store.finish_job(job_id, self.owner, state, error)
            logger.info("job %d: %s%s", job_id, state.value, f" ({error})" if error else "")
        except LeaseLost:
            logger.warning(
                "runner %s: job %d ended as %s but another runner holds it now", self.owner, job_id, state.value
            )
        except StoreError as exc:
            logger.error("job %d: could not record %s: %s (its lease will expire)", job_id, state.value, exc)

    def _release(self, job_id: int) -> None:
        try:
            self.store.release_job(job_id, self.owner)
            logger.info("job %d: released for resumption", job_id)
        except (LeaseLost, StoreError) as exc:
            logger.warning("job %d: could not release: %s", job_id, exc)


def run_forever(
    settings: Settings | None = None, *, execute: ExecuteFn | None = None, stop: threading.Event | None = None
) -> None:
    """``tmpq runner``: run a job runner until SIGINT/SIGTERM (or until ``stop`` is set).

    Migrates the store first. Jobs still running at shutdown go back to PENDING after their current generation.
    """
    settings = settings if settings is not None else Settings()
    store = Store.from_settings(settings)
    runner = JobRunner(store, settings, execute=execute)
    stop = stop if stop is not None else threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        runner.start()
        stop.wait()
    finally:
        runner.stop()
        store.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = ["JobInterrupted", "JobRunner", "ResumeState", "StoreJobSink", "default_owner_id", "run_forever"]
