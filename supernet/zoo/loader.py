"""Load a local diffusers checkpoint directory built around a ``UNet2DModel`` (safetensors only).

The shipped testbed (``models/digits-ddpm-16``) and any DDPM/DDIM-layout checkpoint a user has on disk load the
same way. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from search.errors import ModelLoadError
from supernet.zoo.modeldir import check_model_dir, model_hash

log = logging.getLogger(__name__)



@dataclass
class DiffusionModel:
    """A loaded model: the noise-predicting UNet and what sampling needs from its training scheduler."""

    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor
    clip_sample: bool
    path: Path
    model_hash: str
    scheduler_config: dict

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def sampler(self, batch_size: int = 64):
        """A :class:`~supernet.sampling.DDIMSampler` over this model's UNet."""
        from supernet.sampling import DDIMSampler

        return DDIMSampler(self.unet, self.alphas_cumprod, self.clip_sample, batch_size)


def inspect_model_dir(path: str | Path) -> tuple[Path, dict, dict]:
    """Check ``path`` is a supported diffusers directory without loading weights (see
    :func:`supernet.zoo.modeldir.check_model_dir`); returns the resolved path, the UNet and scheduler configs."""
    checked = check_model_dir(path)
    return checked.path, checked.unet_config, checked.scheduler_config


def alphas_cumprod_from_config(cfg: dict) -> torch.Tensor:
    """ᾱ_t of a DDPM-style scheduler config (via diffusers' own scheduler, so every beta schedule matches)."""
    from diffusers import DDPMScheduler

    keys = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas"}
    sched = DDPMScheduler(**{k: v for k, v in cfg.items() if k in keys and v is not None})
    return sched.alphas_cumprod.clone().to(torch.float32)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a diffusers ``UNet2DModel`` checkpoint directory; the UNet is in eval mode with gradients off."""
    root, _, sched_cfg = inspect_model_dir(path)
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(root / "unet", use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for a broken checkpoint
        raise ModelLoadError(root, f"the UNet could not be loaded: {exc}") from None
    unet.eval().requires_grad_(False).to(device)
    return DiffusionModel(
        unet=unet,
        alphas_cumprod=alphas_cumprod_from_config(sched_cfg),
        clip_sample=bool(sched_cfg.get("clip_sample", True)),
        path=root,
        model_hash=model_hash(root),
        scheduler_config=sched_cfg,
    )
