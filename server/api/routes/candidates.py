"""``/jobs/{id}/candidates``: every evaluated candidate, paginated by a cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from server.api.deps import MAX_ID, JobId, ReadAuth, StoreDep
from server.baselines import TrainTimesteps
from server.schemas import CandidateList, CandidateOut

router = APIRouter(prefix="/jobs/{job_id}/candidates", tags=["candidates"])


async def get_train_timesteps(request: Request) -> TrainTimesteps:
    """The app's :class:`TrainTimesteps` (T of a job's model, for ``is_baseline``)."""
    return request.app.state.train_timesteps


TrainTimestepsDep = Annotated[TrainTimesteps, Depends(get_train_timesteps)]


@router.get("", response_model=CandidateList, dependencies=[ReadAuth], responses={404: {"description": "No such job"}})
def list_candidates(
    job_id: JobId,
    store: StoreDep,
    timesteps: TrainTimestepsDep,
    after: Annotated[
        int, Query(ge=0, le=MAX_ID, description="Only candidates with seq > after (the previous next_after).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    generation: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Only candidates first seen in this generation.")
    ] = None,
) -> CandidateList:
    """Evaluated candidates in storage order; poll with ``after`` to get only the new ones."""
    steps = timesteps(job_id)
    page = store.list_candidates(job_id, after=after, limit=limit, generation=generation)
    return CandidateList(
        items=[CandidateOut.from_record(c, num_train_timesteps=steps) for c in page.items],
        total=page.total,
        next_after=page.next_after,
    )


@router.get(
    "/{key}",
    response_model=CandidateOut,
    dependencies=[ReadAuth],
    responses={404: {"description": "No such job or candidate"}},
)
def get_candidate(
    job_id: JobId, key: Annotated[str, Path(max_length=64)], store: StoreDep, timesteps: TrainTimestepsDep
) -> CandidateOut:
    """One candidate by its key."""
    record = store.get_candidate(job_id, key)
    return CandidateOut.from_record(record, num_train_timesteps=timesteps(job_id))
