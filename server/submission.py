"""Full up-front validation of a submitted job (torch-free): the spec's fields, then its model directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.spec import SearchSpec
from server.modelcheck import check_model_dir


def validate_submission(data: Mapping[str, Any], model_root: Path) -> SearchSpec:
    """The job's spec, with ``model`` resolved to an absolute path under ``model_root``.

    Raises ``ConfigError`` naming a bad field (also a step count or budget the model cannot have), or
    ``ModelLoadError`` naming the model path when it is outside the root or not a supported diffusers directory.
    """
    spec = SearchSpec.from_dict(data)
    model = check_model_dir(spec.model, model_root)
    spec.validate_for_model(model.num_train_timesteps)
    return spec.replace(model=str(model.path))
