"""``POST /jobs/{id}/candidates/{key}/measure``: what a candidate's export saves at run time on this server, measured
against its FP32 model and stored with the candidate (its ``runtime``, the latest measurement per backend).

The export for the backend is built first unless an earlier request built it (:func:`export.build_export`, the
directory ``POST .../export`` zips), then :func:`supernet.runtime.measure.measure_export` loads it and the job's model
and measures both side by side: one denoiser step at the batch asked for, sampling one batch end to end (the export's
K steps against FP at the job's ``evaluation.reference_steps``), the peak resident memory of fresh processes and the
weight bytes. Measurements time things, so one server runs one at a time (a lock file under the data directory;
the build is inside it too). torch is imported only inside the measurement.
"""

from __future__ import annotations

import logging
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from search.errors import ConfigError, Conflict, ModelLoadError
from search.filelock import file_lock
from server.api.deps import JobId, SettingsDep, StoreDep, WriteAuth
from server.api.routes.candidates import TrainTimestepsDep
from server.api.routes.export import build_export, job_model_dir
from server.records import CandidateRecord, JobRecord
from server.schemas import CandidateOut
from server.settings import Settings
from supernet.settings import RUNTIME_BACKENDS, check_backend
from workers.jobspec import JobSpec

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs/{job_id}/candidates", tags=["export"])

#: The lock file (under the data directory) a measurement holds: one at a time per server.
LOCK_FILE = "measure.lock"
#: Largest batch a measurement may time (a step of the FP model at it must fit in the server's memory).
MAX_BATCH_SIZE = 1024

MeasureBackend = Annotated[
    str,
    Query(
        max_length=32,
        description=f"The run-time backend to run the export on, one of {list(RUNTIME_BACKENDS)}: cpu-int8 (oneDNN's "
        "int8 kernels on an x86 CPU, compiled: minutes on a small machine) or reference (fake "
        "quantization in float32: what the search scored, no faster than FP).",
    ),
]
BatchSize = Annotated[
    int,
    Query(ge=1, le=MAX_BATCH_SIZE, description="The batch every timing and the memory measurement runs at."),
]


def lock_path(settings: Settings) -> FilePath:
    """The lock file measurements on this server take turns on."""
    return FilePath(settings.data_dir) / LOCK_FILE


def measure_candidate(
    job: JobRecord, record: CandidateRecord, settings: Settings, backend: str, batch_size: int
) -> dict[str, Any]:
    """Build the candidate's export for ``backend`` unless built, measure it against the job's model at
    ``batch_size`` (FP end to end at the job's ``evaluation.reference_steps``) and return the measurement's
    ``to_dict()``. Waits for any other measurement on this server first.

    Raises:
        Conflict: the job's model or calibrated supernet is not on this server, or the export cannot run or be
            measured here (e.g. ``cpu-int8`` on a CPU without int8 support, or no C++ compiler); the message says
            why.
    """
    spec = JobSpec.from_dict(job.spec)
    model_dir = job_model_dir(job, spec, settings)
    with file_lock(lock_path(settings)):
        export_dir = build_export(job, record, settings, backend)
        logger.info("measuring job %d candidate %s on %s at batch %d", job.id, record.key, backend, batch_size)
        from supernet.runtime.measure import measure_export

        try:
            measurement = measure_export(
                export_dir,
                model_dir,
                backend=backend,
                batch_size=batch_size,
                reference_steps=spec.evaluation.reference_steps,
            )
        except (ConfigError, ModelLoadError, RuntimeError, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise Conflict(
                f"job {job.id} candidate {record.key} cannot be measured on {backend} on this server: {reason}"
            ) from None
    return measurement.to_dict()


@router.post(
    "/{key}/measure",
    response_model=CandidateOut,
    dependencies=[WriteAuth],
    responses={
        400: {"description": "The candidate does not fit the job's calibrated supernet"},
        404: {"description": "No such job or candidate"},
        409: {
            "description": "The job's model or calibrated supernet is not available on this server, or the export "
            "cannot run on the backend here (the reason is given)"
        },
    },
)
def measure_candidate_export(
    job_id: JobId,
    key: Annotated[str, Path(max_length=64)],
    store: StoreDep,
    settings: SettingsDep,
    timesteps: TrainTimestepsDep,
    backend: MeasureBackend = "cpu-int8",
    batch_size: BatchSize = 64,
) -> CandidateOut:
    """Measure the candidate's export on ``backend`` against the job's FP32 model, on this server, and store it as
    the candidate's latest measurement there (``runtime[backend]``); answers the candidate.

    The figures: ``step_ms`` / ``fp_step_ms`` (one denoiser call at ``batch_size``, the fastest of the repeats) and
    their ratio ``speedup_per_step``; ``sample_ms`` / ``fp_sample_ms`` (sampling one batch end to end: the
    candidate's K steps, FP at the job's ``evaluation.reference_steps``) and their ratio ``speedup_vs_reference``;
    ``peak_rss_bytes`` / ``fp_peak_rss_bytes`` (a fresh process loading and running one step, over one that only
    imported torch) and their ratio ``memory_ratio``; ``weight_bytes`` / ``fp_weight_bytes`` (the denoiser's
    tensors).

    Needs the write token when the server has one. It builds the export first unless it was built (as ``POST
    .../export``) and takes a while: three fresh processes measure the memory (about a minute on two cores), and
    ``cpu-int8`` compiles (minutes). Measurements on one server run one at a time; a second request waits for the
    first.
    """
    check_backend(backend)
    record = store.get_candidate(job_id, key)
    job = store.get_job(job_id)
    measurement = measure_candidate(job, record, settings, backend, batch_size)
    stored = store.set_runtime(job_id, key, backend, measurement)
    return CandidateOut.from_record(stored, num_train_timesteps=timesteps(job_id))
