"""What the latent pipelines' adapters share: samples through the pipeline's floating-point VAE, and the
denoiser's diffusers config for an export."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from search.errors import ConfigError


class VAELatents:
    """``encode``/``decode`` of a latent pipeline's adapter through its FP ``AutoencoderKL`` (``pipeline.vae``),
    scaled by the VAE's ``scaling_factor`` as diffusers' pipelines do."""

    pipeline: Any

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in [-1, 1] through the FP VAE (``latents / scaling_factor``, as diffusers does)."""
        vae = self.pipeline.vae
        scale = float(getattr(vae.config, "scaling_factor", 1.0))
        with torch.no_grad():
            images = vae.decode(latents.to(vae.dtype) / scale, return_dict=False)[0]
        return images.to(torch.float32).clamp(-1.0, 1.0)  # type: ignore[no-any-return]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to latents (the VAE posterior's mean, scaled)."""
        vae = self.pipeline.vae
        scale = float(getattr(vae.config, "scaling_factor", 1.0))
        with torch.no_grad():
            return vae.encode(images.to(vae.dtype)).latent_dist.mean * scale  # type: ignore[no-any-return]


def denoiser_config(denoiser: nn.Module, class_name: str) -> dict[str, Any]:
    """A diffusers denoiser's config (with ``_class_name``); ConfigError unless it is a ``class_name``."""
    cfg: dict[str, Any] = json.loads(denoiser.to_json_string())  # type: ignore[operator]
    if cfg.get("_class_name") != class_name:
        raise ConfigError("model", f"expected a {class_name}, not a {cfg.get('_class_name')}")
    return cfg
