"""The model seam: everything model-specific lives in this package (DESIGN.md §9).

Torch-free at import (the server imports the directory check and the kind registry): the adapter classes, which
import torch and diffusers, are imported lazily (PEP 562) when first named.

- :mod:`~supernet.models.kinds`: the pipeline kinds (one per adapter) and their directory rules, torch-free.
- :mod:`~supernet.models.directory`: the directory check (:func:`check_model_dir`, :class:`ModelDir`), the model's
  file identity (:func:`model_hash`), the shipped testbed and its feature extractor (:func:`features_for`).
- :mod:`~supernet.models.registry`: :func:`load_model` picks the adapter from the directory's kind.
- :mod:`~supernet.models.base`: the adapter contract (:class:`DiffusionAdapter`, :class:`NoiseSchedule`).
- :mod:`~supernet.models.unet2d`: the unconditional pixel ``UNet2DModel`` adapter.
- :mod:`~supernet.models.module`: an adapter over any bare ``module(x, t)`` (toy networks in tests).
"""

from __future__ import annotations

import importlib
from typing import Any

from supernet.models.directory import (
    DIGITS_SD_DIR,
    FEATURES_DIR,
    SHIPPED_MODELS,
    TESTBED_DIR,
    ModelDir,
    check_model_dir,
    features_for,
    model_hash,
    prompt_labels_for,
    read_json_object,
)
from supernet.models.kinds import UNET2D, ModelKind, kind_named, model_kinds, register_kind
from supernet.models.registry import adapter_class, load_model

_LAZY = {
    "Condition": "supernet.models.base",
    "DiffusionAdapter": "supernet.models.base",
    "NoiseSchedule": "supernet.models.base",
    "as_adapter": "supernet.models.base",
    "module_hash": "supernet.models.base",
    "ModuleAdapter": "supernet.models.module",
    "UNet2DAdapter": "supernet.models.unet2d",
}

__all__ = [
    "DIGITS_SD_DIR",
    "FEATURES_DIR",
    "SHIPPED_MODELS",
    "TESTBED_DIR",
    "UNET2D",
    "Condition",
    "DiffusionAdapter",
    "ModelDir",
    "ModelKind",
    "ModuleAdapter",
    "NoiseSchedule",
    "UNet2DAdapter",
    "adapter_class",
    "as_adapter",
    "check_model_dir",
    "features_for",
    "kind_named",
    "load_model",
    "model_hash",
    "model_kinds",
    "module_hash",
    "prompt_labels_for",
    "read_json_object",
    "register_kind",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
