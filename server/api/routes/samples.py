"""``/jobs/{id}/samples``: the sample grids of a finished job (the FP model and the front's knee, per prompt).

The driver draws them when the job ends and the runner stores them (:mod:`server.samples`); these routes only read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from server.api.deps import JobId, ReadAuth, SettingsDep, StoreDep
from server.samples import grid_path, read_meta, samples_dir

router = APIRouter(prefix="/jobs/{job_id}/samples", tags=["samples"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such job"},
    409: {"description": "The job has no sample grids (yet)"},
}


@router.get("", dependencies=[ReadAuth], responses=_ERRORS)
def get_samples(job_id: JobId, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """What the job's grids show: ``grids`` (names, each at ``/samples/{name}.png``), ``rows`` (the prompt of each
    row; empty strings for an unconditional model), ``columns``, the knee's ``knee`` key, ``knee_bits`` and
    ``knee_steps``, the FP model's ``fp_steps``, the ``solver`` and the noise ``seed``."""
    job = store.get_job(job_id)
    meta = read_meta(samples_dir(settings.data_dir, job_id), job.created_at.isoformat())
    return {k: v for k, v in meta.items() if k != "job_created_at"}


@router.get(
    "/{name}.png",
    response_class=FileResponse,
    dependencies=[ReadAuth],
    responses={**_ERRORS, 200: {"content": {"image/png": {}}, "description": "The grid (PNG)"}},
)
def get_sample_grid(
    job_id: JobId,
    name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,31}$")],
    store: StoreDep,
    settings: SettingsDep,
) -> FileResponse:
    """One grid as a PNG (one row per prompt, the same noise in the FP and the knee grid)."""
    job = store.get_job(job_id)
    path = grid_path(samples_dir(settings.data_dir, job_id), name, job.created_at.isoformat())
    return FileResponse(path, media_type="image/png")
