"""``/jobs/{id}/candidates``: every evaluated candidate, paginated by a cursor."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from server.api.deps import ReadAuth, StoreDep
from server.schemas import CandidateList, CandidateOut

router = APIRouter(prefix="/jobs/{job_id}/candidates", tags=["candidates"])


@router.get("", response_model=CandidateList, dependencies=[ReadAuth], responses={404: {"description": "No such job"}})
def list_candidates(
    job_id: int,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, description="Only candidates with seq > after (the previous next_after).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    generation: Annotated[int | None, Query(ge=0, description="Only candidates first seen in this generation.")] = None,
) -> CandidateList:
    """Evaluated candidates in storage order; poll with ``after`` to get only the new ones."""
    page = store.list_candidates(job_id, after=after, limit=limit, generation=generation)
    return CandidateList(
        items=[CandidateOut.from_record(c) for c in page.items], total=page.total, next_after=page.next_after
    )


@router.get(
    "/{key}",
    response_model=CandidateOut,
    dependencies=[ReadAuth],
    responses={404: {"description": "No such job or candidate"}},
)
def get_candidate(job_id: int, key: Annotated[str, Path(max_length=64)], store: StoreDep) -> CandidateOut:
    """One candidate by its key."""
    return CandidateOut.from_record(store.get_candidate(job_id, key))
