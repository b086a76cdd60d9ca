"""``/jobs/{id}/candidates/{key}/export``: a candidate as a runnable quantized model (a zip of the export directory).

The export is built here, on the server, which has the model root and the supernet cache: the job's model is loaded,
its calibrated supernet is read from the cache (the one the job's search used; it is never calibrated here), and
:func:`supernet.export.export_candidate` writes the directory. Each (job, candidate) is built once, under
``<data_dir>/exports/job-<id>/``; later downloads are served from there. torch is imported only inside the build.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from search.errors import Conflict, ModelLoadError
from search.filelock import file_lock
from search.spec import SearchSpec
from server.api.deps import JobId, ReadAuth, SettingsDep, StoreDep
from server.modelcheck import check_model_dir
from server.records import CandidateRecord, JobRecord
from server.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs/{job_id}/candidates", tags=["export"])

#: Name of the directory inside the archive, and of the archive itself (without ``.zip``).
ARCHIVE_STEM = "tmpq-job{job_id}-{key}"


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


def _load_job_supernet(job: JobRecord, spec: SearchSpec, settings: Settings) -> tuple[Any, Any]:
    """The job's model and its cached calibrated supernet; :class:`Conflict` when either is not available."""
    from supernet.artifact import META_FILE, SHIPPED_DIR, artifact_name, load_supernet, model_identity
    from supernet.calibration.settings import CalibrationSettings
    from supernet.settings import SupernetSettings
    from supernet.zoo.loader import load_model

    try:
        model = load_model(check_model_dir(spec.model, settings.model_root).path)
    except ModelLoadError as exc:
        raise Conflict(f"job {job.id}: its model is not available on this server ({exc})") from None
    bits = sorted(b for b in spec.bit_options if 2 <= b <= 8)
    identity = model_identity(model)
    calib = CalibrationSettings.from_dict(spec.calibration)
    name = artifact_name(identity, bits, SupernetSettings(), calib)  # as workers.driver caches it
    for root in [*_supernet_dirs(settings), FilePath(model.path) / SHIPPED_DIR]:
        if (root / name / META_FILE).is_file():
            return model, load_supernet(root / name, model)
    raise Conflict(f"job {job.id}: its calibrated supernet ({name}) is not in this server's cache; it is built when "
                   "the job runs")


def _build(job: JobRecord, record: CandidateRecord, settings: Settings, out: FilePath) -> None:
    from search.candidate import Candidate
    from supernet.export import export_candidate

    spec = SearchSpec.from_dict(job.spec)
    model, supernet = _load_job_supernet(job, spec, settings)
    objectives = {k: v for k, v in record.objectives.items() if v is not None}
    export_candidate(supernet, Candidate.from_dict(record.candidate), out, scheduler_config=model.scheduler_config,
                     objectives=objectives, seed=spec.seed, overwrite=True,
                     job={"id": job.id, "created_at": job.created_at.isoformat(), "objective": spec.objective,
                          "model": str(model.path), "generation": record.generation})


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


def build_archive(job: JobRecord, record: CandidateRecord, settings: Settings) -> FilePath:
    """The zip of the candidate's export, built now unless an earlier request built it; returns its path."""
    from supernet.export import read_manifest

    stem = ARCHIVE_STEM.format(job_id=job.id, key=record.key)
    root = job_exports_dir(settings, job.id)
    directory, archive = root / record.key, root / f"{stem}.zip"
    with file_lock(root / f".{record.key}.lock"):
        if archive.is_file():
            try:
                built_for = (read_manifest(directory).get("job") or {}).get("created_at")
                if built_for == job.created_at.isoformat():  # not a deleted job's whose id was reused
                    return archive
            except ModelLoadError as exc:
                logger.warning("rebuilding the export of job %d candidate %s: %s", job.id, record.key, exc)
        archive.unlink(missing_ok=True)
        _build(job, record, settings, directory)  # atomic: a failed build leaves no half-written directory
        _zip(directory, archive, stem)
    logger.info("exported job %d candidate %s to %s", job.id, record.key, archive)
    return archive


@router.get(
    "/{key}/export",
    response_class=FileResponse,
    dependencies=[ReadAuth],
    responses={
        200: {"content": {"application/zip": {}}, "description": "The export directory as a zip archive"},
        400: {"description": "The candidate does not fit the job's calibrated supernet"},
        404: {"description": "No such job or candidate"},
        409: {"description": "The job's model or calibrated supernet is not available on this server"},
    },
)
def export_candidate_archive(
    job_id: JobId, key: Annotated[str, Path(max_length=64)], store: StoreDep, settings: SettingsDep
) -> FileResponse:
    """The candidate as a runnable quantized model: a zip of the directory ``tmpq export`` writes (the UNet's
    packed integer weight codes and scales, per-site bit-widths and activation parameters per timestep, the DDIM
    scheduler with the candidate's timesteps, and a manifest). Load it with ``supernet.export.load(dir)``.

    The first request builds it (seconds: the model and its calibrated supernet are loaded); later ones are served
    from the server's data directory.
    """
    record = store.get_candidate(job_id, key)
    job = store.get_job(job_id)
    archive = build_archive(job, record, settings)
    return FileResponse(archive, media_type="application/zip", filename=archive.name)
