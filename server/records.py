"""Plain, immutable views of stored rows, returned by the store (never ORM objects, so nothing is lazy-loaded
after a session closes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.models import JobState


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: spec, state, progress and lease. ``results_version`` goes up with every stored generation
    and every stored run-time measurement (candidates, front and hypervolume only change then). ``activity`` is what
    a RUNNING job's driver last reported it is doing (``workers.protocol.Activity``), at ``activity_at``; None once
    the job left RUNNING. ``warnings`` are what its driver warned about and went on anyway (kept for good, oldest
    first). ``calibration`` summarises the job's calibrated supernet (``workers.driver.calibration_summary``), once
    the driver has it."""

    id: int
    submission_id: str | None
    spec: dict[str, Any]
    state: JobState
    cancel_requested: bool
    generation: int | None
    evaluated: int
    failed: int
    front_size: int
    results_version: int
    hypervolume: float | None
    error: str | None
    attempts: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    activity: dict[str, Any] | None = None
    activity_at: datetime | None = None
    warnings: tuple[str, ...] = ()
    calibration: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        """SUCCEEDED, FAILED or CANCELLED: the job never changes again."""
        return self.state.terminal

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobRecord:
        """From a ``jobs`` row mapping (or an ORM object's ``__dict__``)."""
        return cls(
            id=row["id"],
            submission_id=row["submission_id"],
            spec=dict(row["spec"]),
            state=JobState(row["state"]),
            cancel_requested=bool(row["cancel_requested"]),
            generation=row["generation"],
            evaluated=row["evaluated"],
            failed=row["failed"],
            front_size=row["front_size"],
            results_version=row["results_version"],
            hypervolume=row["hypervolume"],
            error=row["error"],
            attempts=row["attempts"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            activity=dict(row["activity"]) if isinstance(row.get("activity"), Mapping) else None,
            activity_at=row.get("activity_at"),
            warnings=tuple(str(w) for w in row.get("warnings") or ()),
            calibration=dict(row["calibration"]) if isinstance(row.get("calibration"), Mapping) else None,
        )


@dataclass(frozen=True)
class JobPage:
    """One page of a job listing."""

    items: tuple[JobRecord, ...]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class CandidateRecord:
    """An evaluated candidate with every metric.

    ``seq`` orders candidates by the time they were first stored (the ``after=`` cursor); ``objectives`` holds
    every numeric metric (quality, bitops, weight_bytes, steps and the extras such as fdd, psnr, mse); ``info``
    the extras that are not numbers. ``runtime`` maps a run-time backend to the latest measurement of the
    candidate's export on it (``supernet.runtime.measure.RuntimeMeasurement.to_dict()``); None until one is made.
    """

    seq: int
    job_id: int
    key: str
    generation: int
    candidate: dict[str, Any]
    bits: str
    steps: int
    quality: float | None
    bitops: float | None
    weight_bytes: float | None
    feasible: bool
    non_dominated: bool
    error: str | None
    latency_ms: float | None = None
    objectives: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class FrontRecord:
    """The selected points of a job's current Pareto front, as of generation ``generation``."""

    job_id: int
    generation: int | None
    results_version: int
    points: tuple[CandidateRecord, ...]
    #: The FP model on each schedule of the final front (``Store.set_fp_references``); empty before the analysis.
    fp_references: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class CandidatePage:
    """One page of a job's candidates, in ``seq`` order; ``next_after`` continues it (None at the end)."""

    items: tuple[CandidateRecord, ...]
    total: int
    next_after: int | None


@dataclass(frozen=True)
class HypervolumePoint:
    """Hypervolume and counters after one generation."""

    generation: int
    hypervolume: float
    evaluated: int
    failed: int
    front_size: int
    recorded_at: datetime
