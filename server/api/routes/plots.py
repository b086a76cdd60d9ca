"""``/jobs/{id}/front.png``: the job's Pareto plot as a PNG (matplotlib, rendered in memory).

Imports neither torch nor Ray: :mod:`workers.plots` needs only matplotlib, imported when a plot is drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from server.api.deps import MAX_QUERY_FLOAT, JobId, ReadAuth, StoreDep
from server.api.routes.candidates import TrainTimestepsDep
from server.baselines import budget_bitops, is_uniform_baseline
from server.records import CandidateRecord
from server.store import Store
from workers.jobspec import latency_label, spec_field
from workers.plots import PlotPoint, plot_front
from workers.report import reference_points

router = APIRouter(prefix="/jobs/{job_id}", tags=["plots"])

_PAGE = 1000


def all_candidates(store: Store, job_id: int) -> Iterator[CandidateRecord]:
    """Every stored candidate of a job, in storage order (read a page at a time)."""
    after = 0
    while True:
        page = store.list_candidates(job_id, after=after, limit=_PAGE)
        yield from page.items
        if page.next_after is None:
            return
        after = page.next_after


def _point(record: CandidateRecord, label: str = "", latency: bool = False) -> PlotPoint:
    assert record.bitops is not None and record.quality is not None
    cost = record.bitops if not latency else (record.latency_ms if record.latency_ms is not None else math.nan)
    return PlotPoint(cost, record.quality, label)


@router.get(
    "/front.png",
    response_class=Response,
    dependencies=[ReadAuth],
    responses={
        200: {"content": {"image/png": {}}, "description": "The plot (PNG)"},
        304: {"description": "Unchanged since the given ETag"},
        404: {"description": "No such job"},
    },
)
def get_front_png(
    job_id: JobId,
    store: StoreDep,
    timesteps: TrainTimestepsDep,
    budget: Annotated[
        float | None,
        Query(
            gt=0,
            le=MAX_QUERY_FLOAT,
            allow_inf_nan=False,
            description="BitOps budget to mark (default: the job's budget, when it has one).",
        ),
    ] = None,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The job's evaluated candidates as quality against BitOps (or, for a job searching latency, the milliseconds
    its latency table predicts): the current Pareto front (blue line), every other evaluated candidate (grey), the
    uniform baselines (red squares), the FP model on the final front's schedules (black diamonds, BitOps only) and
    the budget (dashed line, BitOps only).

    A job without evaluated candidates gets a plot saying "no points yet". The ETag changes with every stored
    generation.
    """
    job = store.get_job(job_id)
    etag = f'"front-{job.id}-{job.results_version}-{budget}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    steps = timesteps.of_spec(job.spec)
    records = [r for r in all_candidates(store, job_id) if r.quality is not None and r.bitops is not None]
    baselines = [r for r in records if is_uniform_baseline(r.candidate, steps)]
    baseline_keys = {r.key for r in baselines}
    objective = str(spec_field(job.spec, "evaluation.objective", "mse"))
    model = Path(str(spec_field(job.spec, "model.path", ""))).name or "model"
    title = f"job {job.id}: {model}, {spec_field(job.spec, 'search.algorithm', 'search')}"
    if job.generation is not None:
        title += f" after {job.generation + 1} generation{'s' if job.generation else ''}"
    latency = latency_label(job.spec)
    buffer = io.BytesIO()
    plot_front(
        buffer,
        [_point(r, latency=bool(latency)) for r in records if r.non_dominated],
        others=[
            _point(r, latency=bool(latency)) for r in records if not r.non_dominated and r.key not in baseline_keys
        ],
        baselines=[_point(r, f"{r.bits} K={r.steps}", bool(latency)) for r in baselines],
        references=[] if latency else reference_points(store.fp_references(job_id)),
        quality=objective,
        title=title,
        budget=budget if budget is not None else budget_bitops(job.spec, baselines),
        latency=latency,
    )
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)
