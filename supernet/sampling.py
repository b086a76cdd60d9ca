"""Deterministic DDIM (eta = 0) sampling on an arbitrary strictly descending list of timesteps.

The schedule is exactly what the search chooses, so nothing here assumes uniform spacing. Noise comes from a
seed and is drawn for all samples at once, so results do not depend on the batch size.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from search.errors import ScheduleError

log = logging.getLogger(__name__)

#: Called before each model evaluation with (timestep, x_t batch). Used to collect calibration inputs.
StepHook = Callable[[int, torch.Tensor], None]


def validate_schedule(timesteps: Sequence[int], num_train_timesteps: int) -> list[int]:
    """Return the schedule as ints or raise :class:`ScheduleError` naming what is wrong."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ScheduleError("schedule is empty")
    bad = [t for t in ts if not 0 <= t < num_train_timesteps]
    if bad:
        raise ScheduleError(f"timesteps {bad[:5]} are outside [0, {num_train_timesteps})")
    for a, b in itertools.pairwise(ts):
        if a <= b:
            raise ScheduleError(f"schedule is not strictly descending at {a} -> {b}")
    return ts


def uniform_schedule(steps: int, num_train_timesteps: int) -> list[int]:
    """The DDIM "leading" uniform schedule of ``steps`` steps, descending (e.g. 10 of 1000: 900, 800, ..., 0)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ScheduleError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = num_train_timesteps // steps
    return [i * stride for i in range(steps)][::-1]


def make_noise(n: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """``n`` samples of standard normal noise of ``shape`` from ``seed`` (CPU generator: same on every device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, *shape), generator=gen, dtype=torch.float32)


@dataclass
class DDIMSampler:
    """DDIM sampler over a UNet that predicts noise.

    Args:
        unet: any module called as ``unet(x, t).sample`` (diffusers ``UNet2DModel``, quantized or not).
        alphas_cumprod: ᾱ_t for t in [0, T), from the model's training scheduler.
        clip_sample: clip the predicted x0 to [-1, 1] (the scheduler config's ``clip_sample``).
        batch_size: samples per forward.
    """

    unet: nn.Module
    alphas_cumprod: torch.Tensor
    clip_sample: bool = True
    batch_size: int = 64

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def sample(self, timesteps: Sequence[int], n: int, seed: int, hook: StepHook | None = None) -> torch.Tensor:
        """Generate ``n`` images in [-1, 1] (CPU float32) from the noise of ``seed`` on schedule ``timesteps``."""
        ts = validate_schedule(timesteps, self.num_train_timesteps)
        noise = make_noise(n, self.sample_shape, seed)
        return self.denoise(noise, ts, hook)

    @torch.no_grad()
    def denoise(self, noise: torch.Tensor, timesteps: Sequence[int], hook: StepHook | None = None) -> torch.Tensor:
        """Run the schedule from the given starting noise; batches of ``batch_size``."""
        ts = validate_schedule(timesteps, self.num_train_timesteps)
        out = [self._denoise_batch(chunk, ts, hook) for chunk in torch.split(noise, self.batch_size)]
        return torch.cat(out) if out else noise.new_zeros((0, *noise.shape[1:]))

    def _denoise_batch(self, x: torch.Tensor, ts: list[int], hook: StepHook | None) -> torch.Tensor:
        dev = self.device()
        ac = self.alphas_cumprod.to(torch.float64)
        x = x.to(dev, torch.float32)
        was_training = self.unet.training
        self.unet.eval()
        try:
            for i, t in enumerate(ts):
                if hook is not None:
                    hook(t, x)
                eps = self.unet(x, t).sample.to(torch.float32)
                a_t = float(ac[t])
                a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
                x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
                if self.clip_sample:
                    x0 = x0.clamp(-1.0, 1.0)
                    eps = (x - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5
                x = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
        finally:
            self.unet.train(was_training)
        return x.clamp(-1.0, 1.0).cpu()
