"""Load a local diffusers checkpoint directory built around a ``UNet2DModel`` (safetensors only).

The shipped testbed (``models/digits-ddpm-16``) and any DDPM/DDIM-layout checkpoint a user has on disk load the
same way. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from search.errors import ModelLoadError

log = logging.getLogger(__name__)

SUPPORTED_UNETS = ("UNet2DModel",)
SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler")


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


def _read_json(path: Path, what: str, root: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(root, f"not a diffusers directory: {what} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(root, f"{what} is unreadable: {exc}") from None


def inspect_model_dir(path: str | Path) -> tuple[Path, dict, dict]:
    """Check ``path`` is a supported diffusers directory without loading weights.

    Returns the resolved path, the UNet config and the scheduler config. Raises :class:`ModelLoadError`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ModelLoadError(root, "path does not exist")
    if not root.is_dir():
        raise ModelLoadError(root, "not a directory")
    root = root.resolve()
    index = _read_json(root / "model_index.json", "model_index.json", root)
    unet_entry = index.get("unet")
    if not unet_entry:
        raise ModelLoadError(root, "model_index.json names no 'unet' component")
    unet_class = unet_entry[1] if isinstance(unet_entry, list) and len(unet_entry) == 2 else str(unet_entry)
    if unet_class not in SUPPORTED_UNETS:
        raise ModelLoadError(root, f"unsupported model class {unet_class!r} (supported: {', '.join(SUPPORTED_UNETS)})")
    unet_cfg = _read_json(root / "unet" / "config.json", "unet/config.json", root)
    if unet_cfg.get("_class_name", "UNet2DModel") not in SUPPORTED_UNETS:
        raise ModelLoadError(root, f"unsupported model class {unet_cfg.get('_class_name')!r} in unet/config.json")
    sched_cfg = _read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json", root)
    sched_class = sched_cfg.get("_class_name", "")
    if sched_class not in SUPPORTED_SCHEDULERS:
        supported = ", ".join(SUPPORTED_SCHEDULERS)
        raise ModelLoadError(root, f"unsupported scheduler {sched_class!r} (supported: {supported})")
    if sched_cfg.get("prediction_type", "epsilon") != "epsilon":
        kind = sched_cfg.get("prediction_type")
        raise ModelLoadError(root, f"prediction_type {kind!r} is not supported (epsilon only)")
    if not list((root / "unet").glob("*.safetensors")):
        raise ModelLoadError(root, "unet/ has no .safetensors weights (only safetensors are loaded)")
    return root, unet_cfg, sched_cfg


def model_hash(path: str | Path) -> str:
    """SHA-256 over the UNet's config and safetensors files: the identity used to key supernet artifacts."""
    root = Path(path)
    h = hashlib.sha256()
    for f in [root / "unet" / "config.json", *sorted((root / "unet").glob("*.safetensors"))]:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


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
