"""A job's model path: it must resolve under ``TMPQ_MODEL_ROOT`` and be a supported diffusers directory.

The directory rules are :func:`supernet.zoo.modeldir.check_model_dir`'s (torch-free), the same the loader applies,
so a job the API accepts is one the workers can load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from search.errors import ModelLoadError
from supernet.zoo.modeldir import check_model_dir as check_diffusers_dir


@dataclass(frozen=True)
class ModelInfo:
    """What the server learns from a model directory without loading it."""

    path: Path
    num_train_timesteps: int
    #: The model's components that stay in floating point (a text-to-image model's text encoder and VAE).
    fp_components: tuple[str, ...] = ()


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
    """Validate a job's model directory (see the module docstring); raises :class:`ModelLoadError` naming ``model``."""
    checked = check_diffusers_dir(resolve_model_path(model, root), shown=model)
    return ModelInfo(checked.path, checked.num_train_timesteps, checked.model_kind.fp_components)
