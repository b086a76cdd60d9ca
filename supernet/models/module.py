"""An adapter over any denoiser module called as ``module(x, t)`` (toy networks in tests, models built in code).

It has no files (identified by :func:`~supernet.models.base.module_hash`), no time embedding the seam knows, and
cannot be exported; it can be sampled when given a :class:`~supernet.models.base.NoiseSchedule`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import ConfigError
from supernet.errors import CalibrationError
from supernet.models.base import Condition, DiffusionAdapter, NoiseSchedule


class ModuleAdapter(DiffusionAdapter):
    """A bare unconditional denoiser: ``module(x_t, t)`` returns ε (a tensor, or an object with ``.sample``).

    Args:
        module: the denoiser.
        sample_shape: ``(C, H, W)`` of one input; read from a diffusers-style ``config`` (``in_channels``,
            ``sample_size``) when omitted.
        schedule: the noise schedule to sample with (``None``: the model can be calibrated on given data, not
            sampled).
        path / model_hash: where it lives and its identity, when it stands for a model directory (tests).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        sample_shape: Sequence[int] | None = None,
        schedule: NoiseSchedule | None = None,
        path: str | Path | None = None,
        model_hash: str | None = None,
    ) -> None:
        super().__init__(module, schedule=schedule, path=path, model_hash=model_hash)
        self._shape = tuple(int(s) for s in sample_shape) if sample_shape is not None else _shape_from_config(module)

    @classmethod
    def load(cls, checked: Any, device: str | torch.device = "cpu") -> ModuleAdapter:
        raise ConfigError("model", "a bare module has no directory to load from")

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return True

    @classmethod
    def from_module(
        cls, module: nn.Module, *, schedule: NoiseSchedule | None = None, sample_shape: Sequence[int] | None = None
    ) -> ModuleAdapter:
        return cls(module, sample_shape=sample_shape, schedule=schedule)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def _predict(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition) -> torch.Tensor:
        out = self.denoiser(x_t, t)
        return getattr(out, "sample", out)  # type: ignore[no-any-return]


def _shape_from_config(module: nn.Module) -> tuple[int, ...]:
    cfg = getattr(module, "config", None)
    if cfg is None or getattr(cfg, "in_channels", None) is None or getattr(cfg, "sample_size", None) is None:
        raise CalibrationError(
            f"a {type(module).__name__} without a config has no known sample shape: pass sample_shape"
        )
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else (size[0], size[-1])
    return (int(cfg.in_channels), int(h), int(w))
