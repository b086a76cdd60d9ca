"""The first adapter: an unconditional pixel-space diffusers ``UNet2DModel`` (DDPMPipeline / DDIMPipeline layout).

The shipped testbed (``models/digits-ddpm-16``) and any DDPM/DDIM-layout checkpoint a user has on disk load the
same way, safetensors only; nothing is ever downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import ConfigError, ModelLoadError
from supernet.errors import CalibrationError
from supernet.models.base import Condition, DiffusionAdapter, NoiseSchedule
from supernet.models.directory import ModelDir, model_hash
from supernet.models.kinds import UNET2D
from supernet.models.unet_time import UNetTimeEmbedding

#: The denoiser class of this kind.
CLASS_NAME = "UNet2DModel"


def _unet_class() -> type[nn.Module]:
    from diffusers import UNet2DModel

    return UNet2DModel  # type: ignore[no-any-return]


class UNet2DAdapter(UNetTimeEmbedding, DiffusionAdapter):
    """An unconditional ``UNet2DModel`` predicting ε in pixel space.

    Its blocks are the top-level units (``conv_in``, ``time_embedding``, ``down_blocks.i``, ``mid_block``,
    ``up_blocks.i``, ``conv_out``); its temporal features are the ResBlocks' ``time_emb_proj`` of the time-embedding
    MLP over the sinusoidal projection of ``t``.
    """

    kind = UNET2D.name
    conditional = False

    def __init__(
        self,
        denoiser: nn.Module,
        *,
        schedule: NoiseSchedule | None = None,
        path: str | Path | None = None,
        model_hash: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        sample_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            denoiser, schedule=schedule, path=path, model_hash=model_hash, scheduler_config=scheduler_config
        )
        shape = _config_shape(denoiser)
        if sample_shape is not None and tuple(int(s) for s in sample_shape) != shape:
            raise CalibrationError(f"sample shape {tuple(sample_shape)} does not match the UNet's config {shape}")
        self._shape = shape

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, checked: ModelDir, device: str | torch.device = "cpu") -> UNet2DAdapter:
        """Load ``checked``'s ``unet/`` (safetensors) and its scheduler's noise schedule."""
        root = checked.path
        try:
            unet = _unet_class().from_pretrained(  # type: ignore[attr-defined]
                root / UNET2D.component, use_safetensors=True, low_cpu_mem_usage=False
            )
        except Exception as exc:  # diffusers raises many types for a broken checkpoint
            raise ModelLoadError(root, f"the UNet could not be loaded: {exc}") from None
        unet.eval().requires_grad_(False).to(device)
        return cls(
            unet,
            schedule=NoiseSchedule.from_config(checked.scheduler_config),
            path=root,
            model_hash=model_hash(root, UNET2D),
            scheduler_config=checked.scheduler_config,
        )

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return isinstance(module, _unet_class())

    @classmethod
    def from_module(
        cls, module: nn.Module, *, schedule: NoiseSchedule | None = None, sample_shape: Sequence[int] | None = None
    ) -> UNet2DAdapter:
        if not cls.accepts(module):
            raise ConfigError("model", f"expected a {CLASS_NAME}, got a {type(module).__name__}")
        return cls(module, schedule=schedule, sample_shape=sample_shape)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], scheduler_config: Mapping[str, Any] | None = None) -> UNet2DAdapter:
        unet = _unet_class().from_config(dict(config))  # type: ignore[attr-defined]
        unet.eval().requires_grad_(False)
        schedule = NoiseSchedule.from_config(scheduler_config) if scheduler_config is not None else None
        return cls(unet, schedule=schedule, scheduler_config=scheduler_config)

    # --- samples and noise ---------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def _predict(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition) -> torch.Tensor:
        return self.denoiser(x_t, t).sample  # type: ignore[no-any-return]

    # --- export -----------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = json.loads(self.denoiser.to_json_string())  # type: ignore[operator]
        if cfg.get("_class_name") != CLASS_NAME:
            raise ConfigError("model", f"only a {CLASS_NAME} can be exported, not a {cfg.get('_class_name')}")
        return cfg

    def export_index(self) -> dict[str, Any]:
        return {
            "_class_name": "DDIMPipeline",
            "_diffusers_version": self.config.get("_diffusers_version", "unknown"),
            UNET2D.component: ["diffusers", CLASS_NAME],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the model as a diffusers ``DDPMPipeline`` directory (safetensors) that :func:`load_model` reads."""
        from diffusers import DDPMPipeline, DDPMScheduler

        if not self.scheduler_config:
            raise ConfigError("scheduler_config", "the model has no scheduler config to save")
        scheduler = DDPMScheduler.from_config(self.scheduler_config)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        DDPMPipeline(unet=self.denoiser, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
        return out


def _config_shape(unet: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(unet, "config", None)
    if cfg is None:
        raise CalibrationError(f"a {type(unet).__name__} without a diffusers config has no known sample shape")
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else (size[0], size[-1])
    return (int(cfg.in_channels), int(h), int(w))
