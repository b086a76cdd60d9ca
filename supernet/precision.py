"""The compute dtype and TF32 setting a job evaluates in (torch side of ``model.dtype`` / ``model.tf32``)."""

from __future__ import annotations

import torch

from search.errors import ConfigError
from supernet.model_settings import DTYPES

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert tuple(_TORCH_DTYPES) == DTYPES


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (one of :data:`~supernet.model_settings.DTYPES`)."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ConfigError("dtype", f"must be one of {list(DTYPES)}, got {name!r}") from None


def set_tf32(allow: bool) -> None:
    """Allow or forbid TF32 in CUDA matmuls and convolutions, process-wide. Objectives are computed with it off
    unless a job asks for it: TF32 moved a uniform W6A6 candidate's MSE by 25 % on an H200 (issue 16)."""
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
