"""A torch-free check that a job's model path is a supported diffusers directory under the model root.

Mirrors :func:`supernet.zoo.loader.inspect_model_dir` (which imports torch, so the server cannot use it): the
directory must lie under ``TMPQ_MODEL_ROOT`` once symlinks are resolved, and hold ``model_index.json`` naming a
``UNet2DModel``, ``unet/config.json``, ``scheduler/scheduler_config.json`` and safetensors weights in ``unet/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ModelLoadError

SUPPORTED_UNETS = ("UNet2DModel",)


@dataclass(frozen=True)
class ModelInfo:
    """What the server learns from a model directory without loading it."""

    path: Path
    num_train_timesteps: int


def _read_json(path: Path, what: str, shown: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(shown, f"not a diffusers directory: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(shown, f"{what} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(shown, f"{what} does not hold a JSON object")
    return data


def resolve_model_path(model: str, root: Path) -> Path:
    """``model`` as an absolute, symlink-free path that must lie under ``root``.

    A relative ``model`` is taken relative to ``root``. Raises :class:`ModelLoadError` naming the path otherwise.
    """
    root = Path(root).expanduser().resolve()
    given = Path(model).expanduser()
    candidate = given if given.is_absolute() else root / given
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelLoadError(model, "path does not exist") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(model, f"path cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(root):
        raise ModelLoadError(model, f"path is outside the model root {root}")
    return resolved


def check_model_dir(model: str, root: Path) -> ModelInfo:
    """Validate a job's model directory (see the module docstring); raises :class:`ModelLoadError`."""
    path = resolve_model_path(model, root)
    if not path.is_dir():
        raise ModelLoadError(model, "not a directory")
    index = _read_json(path / "model_index.json", "model_index.json", model)
    unet_entry = index.get("unet")
    if not unet_entry:
        raise ModelLoadError(model, "model_index.json names no 'unet' component")
    unet_class = unet_entry[1] if isinstance(unet_entry, list) and len(unet_entry) == 2 else str(unet_entry)
    if unet_class not in SUPPORTED_UNETS:
        raise ModelLoadError(model, f"unsupported model class {unet_class!r} (supported: {', '.join(SUPPORTED_UNETS)})")
    unet_cfg = _read_json(path / "unet" / "config.json", "unet/config.json", model)
    if unet_cfg.get("_class_name", "UNet2DModel") not in SUPPORTED_UNETS:
        raise ModelLoadError(model, f"unsupported model class {unet_cfg.get('_class_name')!r} in unet/config.json")
    sched_cfg = _read_json(path / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json", model)
    if not any((path / "unet").glob("*.safetensors")):
        raise ModelLoadError(model, "unet/ has no .safetensors weights (only safetensors are loaded)")
    steps = sched_cfg.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelLoadError(model, f"scheduler_config.json has an invalid num_train_timesteps {steps!r}")
    return ModelInfo(path, steps)
