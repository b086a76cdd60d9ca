"""``/jobs/{id}/front``: the current Pareto front, filtered by budget, sorted, with its knee point."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.evaluator import Evaluation
from search.pareto import knee_point
from server.api.deps import MAX_ID, MAX_QUERY_FLOAT, JobId, ReadAuth
from server.api.front_cache import FrontCache
from server.records import CandidateRecord
from server.schemas import FrontOut

router = APIRouter(prefix="/jobs/{job_id}/front", tags=["front"])

SortKey = Literal["bitops", "quality", "weight_bytes", "steps", "latency_ms"]


async def get_front_cache(request: Request) -> FrontCache:
    """The app's :class:`FrontCache`."""
    return request.app.state.front_cache


FrontCacheDep = Annotated[FrontCache, Depends(get_front_cache)]


def knee_of(points: Sequence[CandidateRecord]) -> CandidateRecord | None:
    """The knee of front points (``search.pareto.knee_point``): in milliseconds when every point has a measured
    latency, else in BitOps; on a log scale when all are positive."""
    usable = [p for p in points if p.quality is not None and p.bitops is not None]
    if not usable:
        return None
    axis = "latency" if all(p.latency_ms is not None for p in usable) else "bitops"
    evaluations = [
        Evaluation(p.key, p.quality, p.bitops, p.weight_bytes or math.nan, latency_ms=p.latency_ms or math.nan)
        for p in usable
    ]
    log_scale = all(e.cost(axis) > 0 for e in evaluations)
    knee = knee_point(evaluations, log_bitops=log_scale, axis=axis)
    return next(p for p in usable if p.key == knee.key)


def select_points(
    points: Sequence[CandidateRecord],
    limits: dict[str, float | None],
    sort: SortKey,
    descending: bool,
) -> list[CandidateRecord]:
    """The points within every given limit (a missing value never is), sorted by ``sort`` then key, missing
    values last: the same selection as ``Store.front``."""
    chosen = [
        p
        for p in points
        if all(
            limit is None or (getattr(p, name) is not None and getattr(p, name) <= limit)
            for name, limit in limits.items()
        )
    ]
    chosen.sort(key=lambda p: p.key)
    present = [p for p in chosen if getattr(p, sort) is not None]
    present.sort(key=lambda p: getattr(p, sort), reverse=descending)
    return present + [p for p in chosen if getattr(p, sort) is None]


class FrontQuery(BaseModel):
    """Query parameters of ``GET /jobs/{id}/front``."""

    model_config = ConfigDict(extra="ignore")

    max_bitops: float | None = Field(
        default=None, ge=0, le=MAX_QUERY_FLOAT, allow_inf_nan=False, description="Only points with BitOps ≤ this."
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="Only points with at most this many steps."
    )
    max_weight_bytes: float | None = Field(
        default=None, ge=0, le=MAX_QUERY_FLOAT, allow_inf_nan=False, description="Only points with weights ≤ this."
    )
    max_quality: float | None = Field(
        default=None,
        ge=-MAX_QUERY_FLOAT,
        le=MAX_QUERY_FLOAT,
        allow_inf_nan=False,
        description="Only points with quality ≤ this (lower is better).",
    )
    max_latency_ms: float | None = Field(
        default=None,
        ge=0,
        le=MAX_QUERY_FLOAT,
        allow_inf_nan=False,
        description="Only points whose measured latency (ms of denoising on the job's latency backend) is ≤ this; "
        "points without one are left out.",
    )
    sort: SortKey = Field(default="bitops", description="Sort key (ties by candidate key).")
    order: Literal["asc", "desc"] = Field(default="asc", description="Sort order.")
    knee: bool = Field(default=False, description="Also return the knee point of the selected points.")

    @classmethod
    def from_request(cls, request: Request) -> FrontQuery:
        """Validate the query string; errors are FastAPI's usual 422 with ``loc`` ``["query", name]``."""
        try:
            return cls.model_validate(dict(request.query_params))
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from None

    def limits(self) -> dict[str, float | None]:
        return {
            "bitops": self.max_bitops,
            "steps": self.max_steps,
            "weight_bytes": self.max_weight_bytes,
            "quality": self.max_quality,
            "latency_ms": self.max_latency_ms,
        }


def _query_docs(model: type[BaseModel]) -> list[dict[str, object]]:
    """OpenAPI parameter objects for a query model (the route validates the query itself, see below)."""
    schema = model.model_json_schema()
    return [
        {"name": name, "in": "query", "required": False, "description": prop.pop("description", ""), "schema": prop}
        for name, prop in schema["properties"].items()
    ]


@router.get(
    "",
    response_model=FrontOut,
    dependencies=[ReadAuth],
    responses={404: {"description": "No such job"}},
    openapi_extra={"parameters": _query_docs(FrontQuery)},
)
async def get_front(job_id: JobId, request: Request, cache: FrontCacheDep) -> Response:
    """The points of the job's current Pareto front (quality vs BitOps) within the given limits.

    The front is the stored non-dominated set of the whole job (the store keeps its flag current every
    generation); the limits select among its points. It is served from a per-job cache checked against the job's
    ``results_version`` on every request, so it is never stale.

    This is the hot read path (clients poll it): it runs on the event loop, validates its query with one model
    instead of FastAPI's per-parameter machinery, and returns pre-serialised JSON.
    """
    query = FrontQuery.from_request(request)
    front = await cache.aget(job_id)
    points = select_points(front.points, query.limits(), query.sort, query.order == "desc")
    body = front.render(points, knee_of(points) if query.knee else None)
    return Response(body, media_type="application/json")
