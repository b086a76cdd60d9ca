"""Request and response bodies of the REST API (pydantic), and their conversion from store records."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from search.spec import ALGORITHMS, GRANULARITIES, GROUPINGS, SOLVERS
from server.baselines import DEFAULT_NUM_TRAIN_TIMESTEPS, is_uniform_baseline
from server.models import JobState
from server.records import CandidateRecord, HypervolumePoint, JobRecord
from workers.evaluation_settings import OBJECTIVES
from workers.jobspec import upgrade_spec_dict

SubmissionId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=128, pattern=r"^[\w.:@/+-]+$")]


Section = dict[str, Any]


class JobSubmission(BaseModel):
    """A search job: its spec in sections (see ``workers.jobspec.JobSpec``) plus an optional idempotency key.

    Each section is validated by the package that owns it, once, here, before the job is stored: an unknown key, a
    wrong type or a value out of range anywhere (inside ``calibration`` too), or a combination the model cannot run
    (``evaluation.objective: fdd`` without a feature extractor, more steps than the model's training timesteps), is
    a 422 whose ``loc`` names the dotted field; a model directory outside the model root or not a supported diffusers
    checkpoint is a 400. Omitted sections and fields take their defaults.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "version": 2,
                    "model": {"path": "digits-ddpm-16"},
                    "search": {
                        "bit_options": [4, 6, 8],
                        "steps": [8, 10],
                        "budget": "W6A6@10",
                        "algorithm": "nsga2",
                        "population": 20,
                        "generations": 10,
                        "seed": 0,
                    },
                    "calibration": {"strategy": "tcaq"},
                    "evaluation": {"objective": "mse", "samples": 64, "reference_steps": 100},
                    "execution": {"ray": {"num_actors": 2}},
                    "submission_id": "my-search-001",
                }
            ]
        },
    )

    version: StrictInt | None = Field(default=None, description="Spec format version (2; 1 is the older flat one).")
    model: StrictStr | Section = Field(
        description="The model: a directory (absolute or relative to the server's model root), or a mapping with "
        "`path`, `device` (auto, cpu, cuda, cuda:N), `dtype` (float32, bfloat16, float16), `tf32` (false), and "
        "for text-to-image models `prompts` (a list; default: the model's prompts.txt) or `prompts_file`, "
        "`guidance_scale` (default: the model's, else 7.5; 4.0 for a DiT), `negative_prompt`, `images_per_prompt`; "
        "for class-conditional (DiT) models `classes` (ids or labels; default: every class)."
    )
    search: Section | None = Field(
        default=None,
        description="`bit_options` (2..8, 16 = FP), `steps` (K, one or several), `grouping` "
        f"({', '.join(GROUPINGS)}), `granularity` ({', '.join(GRANULARITIES)}), `solver` ({', '.join(SOLVERS)}), "
        "`budget` (BitOps or 'W6A6@10'), "
        f"`algorithm` ({', '.join(ALGORITHMS)}), `population` (2..1000), `generations` (1..1000), `seed`.",
    )
    calibration: Section | None = Field(
        default=None, description="Supernet calibration settings (`supernet.calibration.settings`), e.g. `strategy`."
    )
    quantization: Section | None = Field(
        default=None,
        description="The quantizers' integer format (`supernet.settings`): `weight_symmetric` and `act_symmetric` "
        "(false: unsigned codes with zero-points), `attention_matmuls` (true), `exclude` (module names left in FP).",
    )
    evaluation: Section | None = Field(
        default=None,
        description=f"`objective` ({', '.join(OBJECTIVES)}), `samples` (2..10000), `reference_steps` (≤ the model's "
        "training timesteps), `rescore_samples` (0..50000; default 1024 with a feature extractor, else 0), "
        "`batch_size`.",
    )
    execution: Section | None = Field(
        default=None,
        description="`ray`: the job's Ray resources (`num_actors`, `num_cpus`, `num_gpus`, `threads_per_actor`, "
        "`task_timeout_s`, `max_retries`, `candidates_per_task`); the cluster is the operator's.",
    )
    submission_id: SubmissionId | None = Field(
        default=None,
        description="Client-chosen idempotency key: resubmitting the same spec with it returns the same job; another "
        "spec with it is a 409.",
    )

    def spec_dict(self) -> dict[str, Any]:
        """The fields the client set, minus ``submission_id``: the input of ``JobSpec.from_dict``."""
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
    activity: dict[str, Any] | None = Field(
        default=None,
        description="What a RUNNING job is doing now, as its driver last reported it (about once a second); null "
        "before its first report and once the job left RUNNING. ``stage``: loading, calibrating, searching, "
        "analysing, rescoring or sampling; ``message``: one line for people; ``calibration``: null, or where the "
        "calibration of the job's supernet is: ``source`` (cache, shipped or calibrating), ``bits``, "
        "``bit_index`` (from 0) of ``bit_count``, ``phase``, ``round``, ``step`` of ``total``, ``elapsed_s``, "
        "``eta_s`` (null: unknown). Other keys may appear (kept as reported; at most 4 KiB in all).",
        json_schema_extra={
            "examples": [
                {
                    "stage": "calibrating",
                    "message": "W6 (2/3): reconstruction 7/12, round 1",
                    "calibration": {
                        "source": "calibrating",
                        "bits": 6,
                        "bit_index": 1,
                        "bit_count": 3,
                        "phase": "reconstruction",
                        "round": 1,
                        "step": 7,
                        "total": 12,
                        "elapsed_s": 80.0,
                        "eta_s": 180.0,
                    },
                }
            ]
        },
    )
    activity_at: datetime | None = Field(default=None, description="When ``activity`` was reported (UTC).")


class JobOut(BaseModel):
    """A job: its spec, state and progress."""

    id: int
    submission_id: str | None
    state: JobState
    cancel_requested: bool
    spec: dict[str, Any]
    progress: Progress
    error: str | None = Field(description="Why the job FAILED.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What the job warned about and went on anyway, oldest first (e.g. a prompt longer than the "
        "text encoder takes, truncated as diffusers truncates it). Kept after the job ends.",
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="The job's calibrated supernet, once the job has it: name, source (calibrated, cache or "
        "shipped), seconds per bit option and the estimate, and from its calibration report each uniform bit "
        "option's MSE and PSNR against FP at a fixed schedule with the worst sites, and the range-fit check.",
    )
    attempts: int = Field(description="How many times a runner claimed it (more than 1 after a takeover).")
    runner: str | None = Field(description="Owner of the current lease (RUNNING jobs).")
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_record(cls, job: JobRecord) -> JobOut:
        spec = upgrade_spec_dict(job.spec)  # jobs stored before the spec had sections read the same
        search = spec.get("search")
        generations = search.get("generations") if isinstance(search, dict) else None
        return cls(
            id=job.id,
            submission_id=job.submission_id,
            state=job.state,
            cancel_requested=job.cancel_requested,
            spec=spec,
            progress=Progress(
                generation=job.generation,
                generations=generations if isinstance(generations, int) else None,
                evaluated=job.evaluated,
                failed=job.failed,
                front_size=job.front_size,
                hypervolume=job.hypervolume,
                activity=job.activity,
                activity_at=_utc(job.activity_at),
            ),
            error=job.error,
            warnings=list(job.warnings),
            calibration=job.calibration,
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
    latency_ms: float | None = Field(
        default=None,
        description="Predicted milliseconds of the candidate's denoising on the job's latency backend (its "
        "measured per-site table, at ``evaluation.latency_batch_size``); null when the job measured none.",
    )
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
    runtime: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="What the candidate's export measured against its FP32 model on the server, per run-time "
        "backend (the latest measurement on each; ``POST .../measure``): the batch, the export's and FP32's step "
        "time and end-to-end sampling time (the export's K steps, FP at ``reference_steps``) in ms, peak resident "
        "memory and weight bytes, and the ratios ``speedup_per_step``, ``speedup_vs_reference`` and "
        "``memory_ratio``; null when it was never measured.",
    )

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
            latency_ms=record.latency_ms,
            feasible=record.feasible,
            non_dominated=record.non_dominated,
            is_baseline=is_uniform_baseline(record.candidate, num_train_timesteps),
            error=record.error,
            objectives=record.objectives,
            info=record.info,
            runtime=record.runtime,
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
    fp_components: list[str] = Field(
        default_factory=list,
        description="The model's components that every point keeps in floating point (a text-to-image model's "
        "text encoder and VAE); the points quantize the denoiser only.",
    )
    fp_references: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The FP model (no quantization) on each schedule of the final front, fewest steps first: "
        "``key``, ``steps``, ``timesteps``, ``bitops`` (W32A32), ``quality`` (the job's objective, null when the "
        "analysis could not measure it), ``mse``, ``psnr``, ``ssim``, ``mean_drift``, ``std_drift`` against the "
        "long FP reference, and ``fdd_rescored`` when the front was re-scored. A point's error against FP at its "
        "own schedule is its ``quant_*`` objectives. Empty until the job's front analysis ran (at its end).",
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
