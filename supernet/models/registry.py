"""Loading a model through its kind's adapter: :func:`load_model`.

Importing this module does not import torch: the adapter's module is imported only when a model is loaded, by the
``"module:Class"`` path its :class:`~supernet.models.kinds.ModelKind` names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import ConfigError
from supernet.conditioning import Conditioning
from supernet.models.directory import check_model_dir
from supernet.models.kinds import ModelKind, kind_named, model_kinds

if TYPE_CHECKING:
    from supernet.models.base import DiffusionAdapter


def adapter_class(kind: ModelKind | str) -> type[DiffusionAdapter]:
    """The adapter class of ``kind`` (imports its module, and with it torch)."""
    kind = kind_named(kind) if isinstance(kind, str) else kind
    module, _, name = kind.adapter.partition(":")
    cls: Any = getattr(importlib.import_module(module), name)
    return cls  # type: ignore[no-any-return]


def adapter_classes() -> tuple[type[DiffusionAdapter], ...]:
    """The adapter class of every registered kind (imports them)."""
    return tuple(adapter_class(k) for k in model_kinds())


def load_model(
    path: str | Path, device: str = "cpu", conditioning: Conditioning | Mapping[str, Any] | None = None
) -> DiffusionAdapter:
    """Load the diffusers directory ``path`` with the adapter of its kind (checked first, torch-free).

    The denoiser is in eval mode with gradients off, on ``device``; a conditional model is conditioned on
    ``conditioning`` (a :class:`~supernet.conditioning.Conditioning` or its dict; ``None``: the directory's own
    prompts, if it ships any). Raises :class:`~search.errors.ModelLoadError` naming the path when the directory is
    not supported or its weights do not load, and ConfigError when an unconditional model is given a condition.
    """
    checked = check_model_dir(path)
    model = adapter_class(checked.kind).load(checked, device)
    if conditioning is not None:
        if not model.conditional:
            raise ConfigError("conditioning", f"{model!r} is unconditional: it takes no prompts")
        if not isinstance(conditioning, Conditioning):
            conditioning = Conditioning.from_dict(conditioning)
        model.configure(conditioning)  # type: ignore[attr-defined]
    return model
