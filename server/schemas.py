"""Request and response bodies of the REST API (pydantic), and their conversion from store records."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, StringConstraints

from search.spec import ALGORITHMS, GRANULARITIES, GROUPINGS, OBJECTIVES
from server.baselines import DEFAULT_NUM_TRAIN_TIMESTEPS, is_uniform_baseline
from server.models import JobState
from server.records import CandidateRecord, HypervolumePoint, JobRecord

SubmissionId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=r"^[\w.:@/+-]+$")]


class JobSubmission(BaseModel):
    """A search job: a search spec (see ``search.spec.SearchSpec``) plus an optional idempotency key.

    Omitted fields take the spec's defaults. Every field is checked before the job is stored: a bad value is a 422
    naming it, a model directory outside the model root or not a diffusers UNet2DModel checkpoint is a 400.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "digits-ddpm-16",
                    "bit_options": [4, 6, 8],
                    "steps": [8, 10],
                    "objective": "mse",
                    "budget": "W6A6@10",
                    "algorithm": "nsga2",
                    "population": 20,
                    "generations": 10,
                    "samples": 64,
                    "seed": 0,
                    "ray": {"num_actors": 2},
                    "submission_id": "my-search-001",
                }
            ]
        },
    )

    model: StrictStr = Field(description="Model directory, absolute or relative to the server's model root.")
    version: StrictInt | None = Field(default=None, description="Spec format version (1).")
    bit_options: StrictInt | list[StrictInt] | None = Field(
        default=None, description="Bit-widths the precision genes choose among (2..8, or 16 for FP). Default 5-8."
    )
    steps: StrictInt | list[StrictInt] | None = Field(
        default=None, description="Step count K, or a set of them (then K is searched too). Default 10."
    )
    grouping: StrictStr | None = Field(default=None, description=f"Timestep grouping: one of {list(GROUPINGS)}.")
    granularity: StrictStr | None = Field(
        default=None, description=f"Precision gene granularity: one of {list(GRANULARITIES)}."
    )
    objective: StrictStr | None = Field(default=None, description=f"Quality objective: one of {list(OBJECTIVES)}.")
    samples: StrictInt | None = Field(default=None, description="Samples per candidate evaluation.")
    rescore_samples: StrictInt | None = Field(default=None, description="Samples to re-score the final front.")
    reference_steps: StrictInt | None = Field(default=None, description="Steps of the FP reference schedule.")
    budget: StrictFloat | StrictInt | StrictStr | None = Field(
        default=None, description="BitOps budget: a number, or the cost of a uniform setting such as 'W6A6@10'."
    )
    algorithm: StrictStr | None = Field(default=None, description=f"Search algorithm: one of {list(ALGORITHMS)}.")
    population: StrictInt | None = Field(default=None, description="Candidates per generation.")
    generations: StrictInt | None = Field(default=None, description="Number of generations.")
    seed: StrictInt | None = Field(default=None, description="Seed of the search.")
    calibration: dict[str, Any] | None = Field(default=None, description="Calibration settings (supernet).")
    ray: dict[str, Any] | None = Field(
        default=None, description="Ray resources: address, num_actors, num_cpus, num_gpus, threads_per_actor."
    )
    submission_id: SubmissionId | None = Field(
        default=None,
        description="Client-chosen idempotency key: resubmitting the same spec with it returns the same job; another "
        "spec with it is a 409.",
    )

    def spec_dict(self) -> dict[str, Any]:
        """The fields the client set, minus ``submission_id``: the input of ``SearchSpec.from_dict``."""
        return self.model_dump(exclude_unset=True, exclude={"submission_id"})


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None else None


class Progress(BaseModel):
    """How far a job got."""

    generation: int | None = Field(description="Last stored generation (from 0); null before the first.")
    generations: int | None = Field(description="Generations the spec asks for.")
    evaluated: int = Field(description="Candidates evaluated so far.")
    failed: int = Field(description="Evaluations that failed so far.")
    front_size: int = Field(description="Points on the current Pareto front.")
    hypervolume: float | None = Field(description="Hypervolume of the current front.")


class JobOut(BaseModel):
    """A job: its spec, state and progress."""

    id: int
    submission_id: str | None
    state: JobState
    cancel_requested: bool
    spec: dict[str, Any]
    progress: Progress
    error: str | None = Field(description="Why the job FAILED.")
    attempts: int = Field(description="How many times a runner claimed it (more than 1 after a takeover).")
    runner: str | None = Field(description="Owner of the current lease (RUNNING jobs).")
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, job: JobRecord) -> JobOut:
        generations = job.spec.get("generations")
        return cls(
            id=job.id,
            submission_id=job.submission_id,
            state=job.state,
            cancel_requested=job.cancel_requested,
            spec=job.spec,
            progress=Progress(
                generation=job.generation,
                generations=generations if isinstance(generations, int) else None,
                evaluated=job.evaluated,
                failed=job.failed,
                front_size=job.front_size,
                hypervolume=job.hypervolume,
            ),
            error=job.error,
            attempts=job.attempts,
            runner=job.lease_owner,
            lease_expires_at=_utc(job.lease_expires_at),
            created_at=_utc(job.created_at),
            updated_at=_utc(job.updated_at),
            started_at=_utc(job.started_at),
            finished_at=_utc(job.finished_at),
        )


class JobList(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    total: int
    limit: int
    offset: int


class CandidateOut(BaseModel):
    """An evaluated candidate and all its metrics."""

    seq: int = Field(description="Storage order; the ``after`` cursor of the candidate listing.")
    key: str
    generation: int
    candidate: dict[str, Any] = Field(description="``Candidate.to_dict()``: timesteps and per-site bit-widths.")
    bits: str = Field(description="Short summary of the bit-widths, e.g. W6A8 or W6.2A7.5.")
    steps: int
    quality: float | None
    bitops: float | None
    weight_bytes: float | None
    feasible: bool
    non_dominated: bool
    is_baseline: bool = Field(
        default=False,
        description="A uniform baseline: one weight bit-width and one activation bit-width for every site, on DDIM's "
        "uniform schedule of its step count K (``i*(T//K)`` descending, T the model's training timesteps).",
    )
    error: str | None
    objectives: dict[str, float | None] = Field(description="Every numeric metric (core and extras like fdd, psnr).")
    info: dict[str, Any] = Field(description="Extras that are not numbers.")

    @classmethod
    def from_record(
        cls, record: CandidateRecord, *, num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS
    ) -> CandidateOut:
        """The response body of a stored candidate; ``num_train_timesteps`` is the job's model's T (for
        ``is_baseline``)."""
        return cls(
            seq=record.seq,
            key=record.key,
            generation=record.generation,
            candidate=record.candidate,
            bits=record.bits,
            steps=record.steps,
            quality=record.quality,
            bitops=record.bitops,
            weight_bytes=record.weight_bytes,
            feasible=record.feasible,
            non_dominated=record.non_dominated,
            is_baseline=is_uniform_baseline(record.candidate, num_train_timesteps),
            error=record.error,
            objectives=record.objectives,
            info=record.info,
        )


class CandidateList(BaseModel):
    """A page of candidates in storage order; pass ``next_after`` as ``after`` for the next page."""

    items: list[CandidateOut]
    total: int = Field(description="Candidates matching the filter (all pages).")
    next_after: int | None = Field(description="Cursor of the next page; null on the last page.")


class FrontOut(BaseModel):
    """The points of the job's current Pareto front within the requested limits."""

    job_id: int
    generation: int | None = Field(description="Generation the front is current as of.")
    count: int
    items: list[CandidateOut]
    knee: CandidateOut | None = Field(
        default=None,
        description="With ``knee=true``: the knee of these points (max distance to the line between "
        "the extremes in normalised (log BitOps, quality) space); null otherwise or when empty.",
    )


class HypervolumePointOut(BaseModel):
    """Hypervolume and counters after one generation."""

    generation: int
    hypervolume: float
    evaluated: int
    failed: int
    front_size: int
    recorded_at: datetime

    @classmethod
    def from_record(cls, point: HypervolumePoint) -> HypervolumePointOut:
        return cls(
            generation=point.generation,
            hypervolume=point.hypervolume,
            evaluated=point.evaluated,
            failed=point.failed,
            front_size=point.front_size,
            recorded_at=_utc(point.recorded_at),
        )


class HypervolumeHistory(BaseModel):
    """Hypervolume per stored generation."""

    job_id: int
    items: list[HypervolumePointOut]


class Health(BaseModel):
    """Liveness: the service answers and its database does."""

    status: str
    database: str


class VersionInfo(BaseModel):
    """Versions of the service, its API and its schema."""

    version: str
    api: str
    schema_revision: str | None
