"""The shipped testbed: a ~1.1M-parameter DDPM trained on the digits, reproducible from a seed.

``tmpq zoo train-digits`` runs :func:`train_digits_ddpm` and writes ``models/digits-ddpm-16`` in diffusers'
``save_pretrained`` layout, so ``DDPMPipeline.from_pretrained`` loads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from supernet.models.directory import TESTBED_DIR
from supernet.models.unet2d import UNet2DAdapter
from supernet.zoo.determinism import deterministic_torch
from supernet.zoo.digits import IMAGE_SIZE, load_digits_tensor

log = logging.getLogger(__name__)


#: The testbed architecture: the arguments of a diffusers ``UNet2DModel``.
TESTBED_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}


def random_testbed(seed: int = 0) -> UNet2DAdapter:
    """The testbed (architecture and training scheduler) with freshly initialised weights (deterministic from
    ``seed``), as a model adapter in eval mode."""
    torch.manual_seed(seed)
    return UNet2DAdapter.from_config(TESTBED_CONFIG, dict(testbed_scheduler().config))


def testbed_unet(seed: int = 0) -> torch.nn.Module:
    """The testbed's denoiser with freshly initialised weights (deterministic from ``seed``), in training mode
    with gradients on, as a freshly built module is."""
    return random_testbed(seed).denoiser.train().requires_grad_(True)


def testbed_scheduler():
    """The 1000-step linear-beta DDPM training scheduler."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of the reference run."""

    steps: int = 2000
    batch_size: int = 64
    max_lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2


def train_digits_ddpm(
    out_dir: str | Path = TESTBED_DIR,
    settings: TrainSettings = TrainSettings(),
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Train the testbed DDPM deterministically and save it in diffusers' ``DDPMPipeline`` layout."""
    with deterministic_torch(settings.threads):
        return _train_digits_ddpm(out_dir, settings, progress)


def _train_digits_ddpm(
    out_dir: str | Path, settings: TrainSettings, progress: Callable[[int, float], None] | None
) -> Path:
    data, _ = load_digits_tensor()
    model = random_testbed(settings.seed)
    unet = model.denoiser.requires_grad_(True)
    sched = testbed_scheduler()
    gen = torch.Generator().manual_seed(settings.seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.max_lr, weight_decay=settings.weight_decay)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.max_lr, total_steps=settings.steps)
    T = sched.config.num_train_timesteps
    acp = sched.alphas_cumprod
    unet.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        idx = torch.randint(0, data.shape[0], (settings.batch_size,), generator=gen)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, T, (settings.batch_size,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model.predict_noise(xt, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if progress is not None:
            progress(step + 1, loss.item())
        if (step + 1) % 100 == 0:
            log.info(
                "step %d/%d loss %.4f (%.0f s)", step + 1, settings.steps, loss.item(), time.perf_counter() - start
            )
    unet.eval().requires_grad_(False)
    out = model.save_pretrained(out_dir)
    log.info("saved the testbed to %s after %.0f s", out, time.perf_counter() - start)
    return out
