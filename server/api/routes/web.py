"""The web page: ``/`` (the job list) and ``/jobs/{id}`` (a job: Pareto chart, hypervolume, candidates, export).

Plain HTML and one vanilla JavaScript module under ``server/static/`` (served at ``/static``), with Chart.js
vendored in ``server/static/vendor/`` (no CDN). The page reads only the public REST API under ``/api/v1``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.api.deps import JobId

#: The page's files (packaged with ``server``).
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
INDEX = STATIC_DIR / "index.html"

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/")
def job_list_page() -> FileResponse:
    """The job list (the page's script routes on the URL path)."""
    return _page()


@router.get("/jobs/{job_id}")
def job_page(job_id: JobId) -> FileResponse:
    """A job's page (its data comes from the REST API, so an unknown job is reported by the page itself)."""
    return _page()


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/jobs/{id}``, and its assets at ``/static``."""
    if not INDEX.is_file():  # a packaging error; the API itself still works
        logger.warning("the web page's files are missing from %s; / will answer 404", STATIC_DIR)
        return
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
