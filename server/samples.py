"""Where a job's sample grids live on the server, and how they are written and read (torch-free).

The runner's sink writes what the driver hands it (``workers.samples``) under ``<data_dir>/samples/job-<id>/``: one
PNG per grid and ``samples.json`` describing them, tagged with the job's creation time so that a deleted job whose
id is reused never shows another job's images. Written atomically (a temporary directory renamed into place).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.errors import Conflict

META_FILE = "samples.json"
#: Grid names the driver uses (PNG files ``<name>.png``).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def samples_dir(data_dir: str | Path, job_id: int) -> Path:
    """The directory of job ``job_id``'s sample grids."""
    return Path(data_dir) / "samples" / f"job-{job_id}"


def write_samples(directory: Path, samples: Mapping[str, Any], job_created_at: str) -> Path:
    """Store ``samples`` (``{"images": {name: png bytes}, ...}``) in ``directory``, replacing what was there."""
    images = dict(samples.get("images") or {})
    bad = [name for name in images if not NAME_PATTERN.match(str(name))]
    if bad:
        raise ValueError(f"invalid sample grid names {bad}")
    meta = {k: v for k, v in samples.items() if k != "images"}
    meta.update({"job_created_at": job_created_at, "grids": sorted(images)})
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, png in images.items():
            (tmp / f"{name}.png").write_bytes(png)
        (tmp / META_FILE).write_text(json.dumps(meta, sort_keys=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_meta(directory: Path, job_created_at: str) -> dict[str, Any]:
    """The description of a job's stored grids; :class:`Conflict` when the job has none (yet)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("job_created_at") != job_created_at:
        raise Conflict("the job has no sample grids yet: they are drawn when it finishes")
    return meta


def grid_path(directory: Path, name: str, job_created_at: str) -> Path:
    """The PNG of grid ``name``; :class:`Conflict` when the job has no such grid."""
    meta = read_meta(directory, job_created_at)
    if name not in meta.get("grids", []) or not NAME_PATTERN.match(name):
        raise Conflict(f"the job has no sample grid {name!r} (it has {', '.join(meta.get('grids', [])) or 'none'})")
    return directory / f"{name}.png"
