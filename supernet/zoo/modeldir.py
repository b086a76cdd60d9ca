"""Torch-free checks of a diffusers checkpoint directory: what loads, what is refused, and the model's identity.

Used by the loader before it imports diffusers, and by the server (which must not import torch) to validate a
job's model path up front with exactly the same rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ModelLoadError

SUPPORTED_UNETS = ("UNet2DModel",)
SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler")


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory: its resolved path and the UNet and scheduler configs."""

    path: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))


def read_json_object(path: Path, what: str, shown: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ModelLoadError` naming ``shown`` if it is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(shown, f"not a diffusers directory: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(shown, f"{what} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(shown, f"{what} does not hold a JSON object")
    return data


def check_model_dir(path: str | Path, shown: str | Path | None = None) -> ModelDir:
    """Check ``path`` is a supported diffusers directory without loading weights.

    It must hold ``model_index.json`` naming a ``UNet2DModel``, ``unet/config.json``, safetensors weights in
    ``unet/``, and ``scheduler/scheduler_config.json`` of a DDPM-family scheduler with epsilon prediction and a
    positive integer ``num_train_timesteps``. Errors are :class:`ModelLoadError` naming ``shown`` (default: the
    path).
    """
    root = Path(path).expanduser()
    shown = root if shown is None else shown
    if not root.exists():
        raise ModelLoadError(shown, "path does not exist")
    if not root.is_dir():
        raise ModelLoadError(shown, "not a directory")
    root = root.resolve()
    index = read_json_object(root / "model_index.json", "model_index.json", shown)
    unet_entry = index.get("unet")
    if not unet_entry:
        raise ModelLoadError(shown, "model_index.json names no 'unet' component")
    unet_class = unet_entry[1] if isinstance(unet_entry, list) and len(unet_entry) == 2 else str(unet_entry)
    if unet_class not in SUPPORTED_UNETS:
        raise ModelLoadError(shown, f"unsupported model class {unet_class!r} (supported: {', '.join(SUPPORTED_UNETS)})")
    unet_cfg = read_json_object(root / "unet" / "config.json", "unet/config.json", shown)
    if unet_cfg.get("_class_name", "UNet2DModel") not in SUPPORTED_UNETS:
        raise ModelLoadError(shown, f"unsupported model class {unet_cfg.get('_class_name')!r} in unet/config.json")
    sched_cfg = read_json_object(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json",
                                 shown)
    sched_class = sched_cfg.get("_class_name", "")
    if sched_class not in SUPPORTED_SCHEDULERS:
        supported = ", ".join(SUPPORTED_SCHEDULERS)
        raise ModelLoadError(shown, f"unsupported scheduler {sched_class!r} (supported: {supported})")
    if sched_cfg.get("prediction_type", "epsilon") != "epsilon":
        kind = sched_cfg.get("prediction_type")
        raise ModelLoadError(shown, f"prediction_type {kind!r} is not supported (epsilon only)")
    steps = sched_cfg.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelLoadError(shown, f"scheduler_config.json has an invalid num_train_timesteps {steps!r}")
    if not any((root / "unet").glob("*.safetensors")):
        raise ModelLoadError(shown, "unet/ has no .safetensors weights (only safetensors are loaded)")
    return ModelDir(root, unet_cfg, sched_cfg)


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
