"""What the adapters of latent diffusers pipelines share (Stable Diffusion, DiT): samples through the pipeline's
floating-point VAE, the FP components moved with the denoiser and copied into an export, the identity of the
configured condition, and the denoiser's diffusers config for an export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from search.errors import ConfigError
from supernet.models.base import DiffusionAdapter

if TYPE_CHECKING:
    from supernet.conditioning import Conditioning


class LatentPipelineAdapter(DiffusionAdapter):
    """A conditional latent pipeline: ``pipeline`` holds the denoiser and an ``AutoencoderKL`` (``pipeline.vae``);
    ``conditioning`` is set by the subclass's ``configure``."""

    #: The pipeline's components an export copies beside the denoiser, file for file.
    export_parts: ClassVar[tuple[str, ...]] = ("vae",)
    pipeline: Any
    conditioning: Conditioning | None

    @property
    def condition_key(self) -> str | None:
        """The key of the configured condition (prompts or classes, and guidance): supernets calibrated on another
        condition are other artifacts."""
        return self.conditioning.key() if self.conditioning is not None else None

    def components(self) -> dict[str, nn.Module]:
        """The floating-point components besides the denoiser (kept FP): the VAE."""
        return {"vae": self.pipeline.vae}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Move the denoiser (cast to ``dtype``) and the FP components (in their dtype) to ``device``."""
        super().to(device, dtype)
        if device is not None:
            for part in self.components().values():
                part.to(device)

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

    def export_components(self, out_dir: Path) -> list[str]:
        """Copy :attr:`export_parts` into an export, file for file from the model directory (configs, texts,
        safetensors), or saved from the loaded pipeline when there is no directory."""
        written: list[str] = []
        for name in self.export_parts:
            target = Path(out_dir) / name
            source = self.path / name if self.path is not None else None
            if source is not None and source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                for f in sorted(source.iterdir()):
                    if f.is_file() and f.suffix in (".json", ".txt", ".safetensors"):
                        shutil.copy2(f, target / f.name)
            else:
                part = getattr(self.pipeline, name)
                if name == "tokenizer":
                    part.save_pretrained(target)
                else:
                    part.save_pretrained(target, safe_serialization=True)
            written += [f"{name}/{f.name}" for f in sorted(target.iterdir()) if f.is_file()]
        return written


def denoiser_config(denoiser: nn.Module, class_name: str) -> dict[str, Any]:
    """A diffusers denoiser's config (with ``_class_name``); ConfigError unless it is a ``class_name``."""
    cfg: dict[str, Any] = json.loads(denoiser.to_json_string())  # type: ignore[operator]
    if cfg.get("_class_name") != class_name:
        raise ConfigError("model", f"expected a {class_name}, not a {cfg.get('_class_name')}")
    return cfg
