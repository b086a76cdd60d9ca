"""Full up-front validation of a submitted job (torch-free): every field of every section, then its model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workers.jobspec import JobSpec, validate_job


def validate_submission(data: Mapping[str, Any], model_root: Path) -> JobSpec:
    """The job's spec, resolved against its model under ``model_root`` (see :func:`workers.jobspec.validate_job`).

    Raises ``ConfigError`` naming the dotted field (HTTP 422), or ``ModelLoadError`` naming the model path when it
    is outside the root or not a supported diffusers directory (HTTP 400).
    """
    return validate_job(data, model_root)
