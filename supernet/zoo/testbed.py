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

import torch
import torch.nn.functional as F

from supernet.zoo.digits import IMAGE_SIZE, load_digits_tensor

log = logging.getLogger(__name__)

TESTBED_DIR = Path(__file__).resolve().parents[2] / "models" / "digits-ddpm-16"


def testbed_unet(seed: int = 0):
    """The testbed architecture with freshly initialised weights (deterministic from ``seed``)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


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


def train_digits_ddpm(out_dir: str | Path = TESTBED_DIR, settings: TrainSettings = TrainSettings(),
                      progress: Callable[[int, float], None] | None = None) -> Path:
    """Train the testbed DDPM deterministically and save it with ``DDPMPipeline.save_pretrained``."""
    from diffusers import DDPMPipeline

    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    data, _ = load_digits_tensor()
    unet = testbed_unet(settings.seed)
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
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if progress is not None:
            progress(step + 1, loss.item())
        if (step + 1) % 100 == 0:
            log.info("step %d/%d loss %.4f (%.0f s)", step + 1, settings.steps, loss.item(),
                     time.perf_counter() - start)
    unet.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out, safe_serialization=True)
    log.info("saved the testbed to %s after %.0f s", out, time.perf_counter() - start)
    return out
