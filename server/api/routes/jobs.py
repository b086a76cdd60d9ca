"""``/jobs``: submit, list, inspect, cancel and delete search jobs."""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from server.api.deps import MAX_INT64, JobId, ReadAuth, SettingsDep, StoreDep, WriteAuth
from server.api.routes.export import job_exports_dir
from server.models import JobState
from server.schemas import JobList, JobOut, JobSubmission
from server.submission import validate_submission

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS = {404: {"description": "No such job"}}


@router.post(
    "",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAuth],
    responses={
        200: {"description": "Same submission_id and spec: the existing job"},
        400: {"description": "Model path outside the model root or not a diffusers directory"},
        409: {"description": "submission_id already used with another spec"},
    },
)
def submit_job(body: JobSubmission, store: StoreDep, settings: SettingsDep, response: Response) -> JobOut:
    """Validate a search spec fully and queue it as a PENDING job."""
    spec = validate_submission(body.spec_dict(), settings.model_root)
    job, created = store.create_job(spec.to_dict(), submission_id=body.submission_id)
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobOut.from_record(job)


@router.get("", response_model=JobList, dependencies=[ReadAuth])
def list_jobs(
    store: StoreDep,
    state: Annotated[list[JobState] | None, Query(description="Only jobs in these states (repeatable).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT64, description="Skip this many jobs.")] = 0,
) -> JobList:
    """Jobs, newest first."""
    page = store.list_jobs(states=state, limit=limit, offset=offset)
    return JobList(
        items=[JobOut.from_record(j) for j in page.items], total=page.total, limit=page.limit, offset=page.offset
    )


@router.get("/{job_id}", response_model=JobOut, dependencies=[ReadAuth], responses=_ERRORS)
def get_job(job_id: JobId, store: StoreDep) -> JobOut:
    """A job's state and progress."""
    return JobOut.from_record(store.get_job(job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    dependencies=[WriteAuth],
    responses={
        **_ERRORS,
        202: {"description": "RUNNING: it stops after its current generation"},
        409: {"description": "The job already SUCCEEDED or FAILED"},
    },
)
def cancel_job(job_id: JobId, store: StoreDep, response: Response) -> JobOut:
    """Cancel a job: a PENDING one at once, a RUNNING one after its current generation (202)."""
    job = store.cancel_job(job_id)
    if job.state is JobState.RUNNING:
        response.status_code = status.HTTP_202_ACCEPTED
    return JobOut.from_record(job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAuth],
    responses={**_ERRORS, 409: {"description": "The job is not finished"}},
)
def delete_job(job_id: JobId, store: StoreDep, settings: SettingsDep) -> Response:
    """Delete a finished job (SUCCEEDED, FAILED or CANCELLED) and everything stored for it, its built exports
    included."""
    store.delete_job(job_id)
    shutil.rmtree(job_exports_dir(settings, job_id), ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
