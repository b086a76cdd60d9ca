"""``/jobs/{id}/candidates/{key}/export``: a candidate as a runnable quantized model (a zip of the export directory).

``POST`` builds it (guarded by the write token: it loads a model and writes files) and answers the zip; ``GET`` only
downloads an export already built (409 otherwise) and never builds anything.

The export is built here, on the server, which has the model root and the supernet cache: the job's model is loaded,
its calibrated supernet is read from the cache (the one the job's search used; it is never calibrated here), and
:func:`supernet.export.export_candidate` writes the directory. Each (job, candidate) is built once, under
``<data_dir>/exports/job-<id>/``; later requests are served from there. torch is imported only inside the build.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zipfile
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse

from search.errors import Conflict, ModelLoadError
from search.filelock import file_lock
from server.api.deps import JobId, ReadAuth, SettingsDep, StoreDep, WriteAuth
from server.modelcheck import check_model_dir
from server.records import CandidateRecord, JobRecord
from server.settings import Settings
from supernet.settings import RUNTIME_BACKENDS, check_backend
from workers.jobspec import JobSpec

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs/{job_id}/candidates", tags=["export"])

#: Name of the directory inside the archive, and of the archive itself (without ``.zip``).
ARCHIVE_STEM = "tmpq-job{job_id}-{key}"
#: The export's manifest (``supernet.export.MANIFEST_FILE``; not imported from there: that module imports torch).
MANIFEST_FILE = "manifest.json"

_ZIP_RESPONSE = {"content": {"application/zip": {}}, "description": "The export directory as a zip archive"}

#: The ``backend`` query parameter: which run-time backend the export's manifest names (``load(dir)`` uses it).
Backend = Annotated[
    str,
    Query(
        max_length=32,
        description=f"The run-time backend the export is made for, one of {list(RUNTIME_BACKENDS)}: "
        "supernet.export.load(dir) uses it unless told otherwise (the files are the same for every backend).",
    ),
]


def exports_dir(settings: Settings) -> FilePath:
    """Where built exports are kept: ``<data_dir>/exports``."""
    return FilePath(settings.data_dir) / "exports"


def job_exports_dir(settings: Settings, job_id: int) -> FilePath:
    """Where one job's built exports are kept (removed with the job)."""
    return exports_dir(settings) / f"job-{job_id}"


def _supernet_dirs(settings: Settings) -> list[FilePath]:
    """The supernet caches to look in: the server's data directory, then the runner's default."""
    from supernet.artifact import default_cache_dir

    dirs: list[FilePath] = []
    for d in (FilePath(settings.data_dir) / "supernets", default_cache_dir()):
        if d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return dirs


def _model_unavailable(job: JobRecord, exc: ModelLoadError) -> Conflict:
    return Conflict(f"job {job.id}: its model is not available on this server ({exc})")


def job_model_dir(job: JobRecord, spec: JobSpec, settings: Settings) -> FilePath:
    """The job's model directory on this server (``spec.model.path`` under the model root), checked torch-free;
    :class:`Conflict` when it is missing or not a supported model."""
    try:
        return check_model_dir(spec.model.path, settings.model_root).path
    except ModelLoadError as exc:
        raise _model_unavailable(job, exc) from None


def _load_job_supernet(job: JobRecord, spec: JobSpec, settings: Settings) -> tuple[Any, Any]:
    """The job's model and its cached calibrated supernet; :class:`Conflict` when either is not available."""
    from supernet.artifact import META_FILE, SHIPPED_DIR, load_supernet
    from supernet.models import load_model
    from workers.driver import job_supernet_name

    path = job_model_dir(job, spec, settings)
    try:
        model = load_model(path, conditioning=spec.model.conditioning(path))
    except ModelLoadError as exc:
        raise _model_unavailable(job, exc) from None
    name = job_supernet_name(spec, model)
    for root in [*_supernet_dirs(settings), FilePath(model.path) / SHIPPED_DIR]:
        if (root / name / META_FILE).is_file():
            return model, load_supernet(root / name, model)
    raise Conflict(
        f"job {job.id}: its calibrated supernet ({name}) is not in this server's cache; it is built when the job runs"
    )


def _build(job: JobRecord, record: CandidateRecord, settings: Settings, out: FilePath, backend: str) -> None:
    from search.candidate import Candidate
    from supernet.export import export_candidate

    spec = JobSpec.from_dict(job.spec)
    model, supernet = _load_job_supernet(job, spec, settings)
    objectives = {k: v for k, v in record.objectives.items() if v is not None}
    export_candidate(
        supernet,
        Candidate.from_dict(record.candidate),
        out,
        scheduler_config=model.scheduler_config,
        objectives=objectives,
        seed=spec.search.seed,
        overwrite=True,
        solver=spec.search.solver,
        backend=backend,
        job={
            "id": job.id,
            "created_at": job.created_at.isoformat(),
            "objective": spec.evaluation.objective,
            "model": str(model.path),
            "generation": record.generation,
        },
    )


def _zip(directory: FilePath, archive: FilePath, top: str) -> None:
    """Write ``directory``'s files into ``archive`` (atomically) under the folder ``top``."""
    tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex[:8]}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for f in sorted(p for p in directory.rglob("*") if p.is_file()):
                zf.write(f, f"{top}/{f.relative_to(directory).as_posix()}")
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


def _paths(job: JobRecord, record: CandidateRecord, settings: Settings, backend: str) -> tuple[FilePath, FilePath]:
    """``(export directory, zip archive)`` of a candidate's export for ``backend``."""
    root = job_exports_dir(settings, job.id)
    name = record.key if backend == "reference" else f"{record.key}.{backend}"
    return root / name, root / f"{ARCHIVE_STEM.format(job_id=job.id, key=name)}.zip"


def built_archive(
    job: JobRecord, record: CandidateRecord, settings: Settings, backend: str = "reference"
) -> FilePath | None:
    """The zip of the candidate's export when it was built for this job already, else None (never builds)."""
    directory, archive = _paths(job, record, settings, backend)
    if not archive.is_file():
        return None
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError) as exc:
        logger.warning("the export of job %d candidate %s has no readable manifest: %s", job.id, record.key, exc)
        return None
    if not isinstance(manifest, dict) or manifest.get("backend", "reference") != backend:
        return None
    built_for = (manifest.get("job") or {}).get("created_at")
    return archive if built_for == job.created_at.isoformat() else None  # not a deleted job's whose id was reused


def build_archive(job: JobRecord, record: CandidateRecord, settings: Settings, backend: str = "reference") -> FilePath:
    """The zip of the candidate's export for ``backend``, built now unless an earlier request built it."""
    directory, archive = _paths(job, record, settings, backend)
    with file_lock(directory.parent / f".{directory.name}.lock"):
        built = built_archive(job, record, settings, backend)
        if built is not None:
            return built
        archive.unlink(missing_ok=True)
        _build(job, record, settings, directory, backend)  # atomic: a failed build leaves no half-written directory
        _zip(directory, archive, archive.name.removesuffix(".zip"))
    logger.info("exported job %d candidate %s to %s", job.id, record.key, archive)
    return archive


def build_export(job: JobRecord, record: CandidateRecord, settings: Settings, backend: str = "reference") -> FilePath:
    """The candidate's export directory for ``backend`` under the data directory (what the zip holds), built now
    unless an earlier request built it (:func:`build_archive`)."""
    build_archive(job, record, settings, backend)
    return _paths(job, record, settings, backend)[0]


@router.post(
    "/{key}/export",
    response_class=FileResponse,
    dependencies=[WriteAuth],
    responses={
        200: _ZIP_RESPONSE,
        400: {"description": "The candidate does not fit the job's calibrated supernet"},
        404: {"description": "No such job or candidate"},
        409: {"description": "The job's model or calibrated supernet is not available on this server"},
    },
)
def build_candidate_export(
    job_id: JobId,
    key: Annotated[str, Path(max_length=64)],
    store: StoreDep,
    settings: SettingsDep,
    backend: Backend = "reference",
) -> FileResponse:
    """Build the candidate as a runnable quantized model, unless it was built already, and answer it as a zip of
    the directory ``tmpq export`` writes (the UNet's packed integer weight codes and scales, per-site bit-widths and
    activation parameters per timestep, the DDIM scheduler with the candidate's timesteps, and a manifest). Load it
    with ``supernet.export.load(dir)``; ``backend`` names the run-time backend its manifest records for ``load``.

    Needs the write token when the server has one: building loads the job's model and its calibrated supernet
    (seconds) and writes into the server's data directory. Later requests, and ``GET``, are served from there.
    """
    check_backend(backend)
    record = store.get_candidate(job_id, key)
    job = store.get_job(job_id)
    archive = build_archive(job, record, settings, backend)
    return FileResponse(archive, media_type="application/zip", filename=archive.name)


@router.get(
    "/{key}/export",
    response_class=FileResponse,
    dependencies=[ReadAuth],
    responses={
        200: _ZIP_RESPONSE,
        404: {"description": "No such job or candidate"},
        409: {"description": "The export was not built yet (``POST`` the same path to build it)"},
    },
)
def download_candidate_export(
    job_id: JobId,
    key: Annotated[str, Path(max_length=64)],
    store: StoreDep,
    settings: SettingsDep,
    backend: Backend = "reference",
) -> FileResponse:
    """Download a candidate's export built earlier by ``POST`` (the same zip). Never builds anything: an export
    not built yet is a 409."""
    check_backend(backend)
    record = store.get_candidate(job_id, key)
    job = store.get_job(job_id)
    archive = built_archive(job, record, settings, backend)
    if archive is None:
        raise Conflict(
            f"the export of job {job_id} candidate {key} is not built yet; build it with POST "
            f"/api/v1/jobs/{job_id}/candidates/{key}/export (tmpq export {job_id} {key})"
        )
    return FileResponse(archive, media_type="application/zip", filename=archive.name)
