"""``/jobs/{id}/hypervolume``: the hypervolume history."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import JobId, ReadAuth, StoreDep
from server.schemas import HypervolumeHistory, HypervolumePointOut

router = APIRouter(prefix="/jobs/{job_id}/hypervolume", tags=["hypervolume"])


@router.get(
    "", response_model=HypervolumeHistory, dependencies=[ReadAuth], responses={404: {"description": "No such job"}}
)
def get_hypervolume(job_id: JobId, store: StoreDep) -> HypervolumeHistory:
    """Hypervolume of the front after each stored generation."""
    return HypervolumeHistory(
        job_id=job_id, items=[HypervolumePointOut.from_record(p) for p in store.hypervolume_history(job_id)]
    )
