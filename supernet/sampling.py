"""Deterministic sampling (DDIM with eta = 0, or DPM-Solver++(2M)) on an arbitrary strictly descending list of
timesteps.

The schedule is exactly what the search chooses, so nothing here assumes uniform spacing. Noise comes from a
seed and is drawn for all samples at once, so results do not depend on the batch size. The model is a
:class:`~supernet.models.base.DiffusionAdapter`: the sampler knows nothing of its architecture, only its sample
shape, noise schedule, conditions, ``predict_noise`` and ``decode``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from search.errors import ConfigError, ScheduleError
from search.spec import SOLVERS

if TYPE_CHECKING:
    from supernet.models.base import Condition, DiffusionAdapter, NoiseSchedule

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


class Sampler:
    """Deterministic sampling on any strictly descending list of timesteps, with DDIM or DPM-Solver++(2M).

    Both take one model evaluation per listed timestep and end on the predicted clean sample (the last step goes
    to ᾱ = 1), so a schedule of K timesteps costs K evaluations whichever solver runs it.

    Args:
        model: the :class:`~supernet.models.base.DiffusionAdapter`; its :meth:`predict_noise` is called once per
            step and batch, with each sample's condition (:meth:`condition_for`) for a conditional model.
        batch_size: samples per forward.
        schedule: the noise schedule to run (default: the model's own, ``model.schedule``).
        solver: one of :data:`SOLVERS`.
    """

    def __init__(
        self,
        model: DiffusionAdapter,
        batch_size: int = 64,
        schedule: NoiseSchedule | None = None,
        solver: str = "ddim",
    ) -> None:
        if solver not in SOLVERS:
            raise ConfigError("solver", f"must be one of {list(SOLVERS)}, got {solver!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self.schedule = schedule if schedule is not None else model.schedule
        self.solver = solver

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    @property
    def clip_sample(self) -> bool:
        return self.schedule.clip_sample

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.model.sample_shape

    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def sample(
        self, timesteps: Sequence[int], n: int, seed: int, hook: StepHook | None = None, *, decode: bool = True
    ) -> torch.Tensor:
        """Generate ``n`` images in [-1, 1] (CPU float32) from the noise of ``seed`` on schedule ``timesteps``
        (``decode=False``: the denoised samples in the model's own space, e.g. latents, before the decoder)."""
        ts = validate_schedule(timesteps, self.num_train_timesteps)
        noise = make_noise(n, self.sample_shape, seed)
        return self.denoise(noise, ts, hook, decode=decode)

    @torch.no_grad()
    def denoise(
        self, noise: torch.Tensor, timesteps: Sequence[int], hook: StepHook | None = None, *, decode: bool = True
    ) -> torch.Tensor:
        """Run the schedule from the given starting noise (in the model's sample space; sample ``i`` of it gets the
        model's condition of sample ``i``), decode; batches of ``batch_size``."""
        ts = validate_schedule(timesteps, self.num_train_timesteps)
        condition = self.model.condition_for(int(noise.shape[0])) if self.model.conditional else None
        out = []
        for start in range(0, int(noise.shape[0]), self.batch_size):
            stop = start + self.batch_size
            cond = condition[start:stop] if condition is not None else None
            out.append(self._denoise_batch(noise[start:stop], ts, hook, cond, decode))
        return torch.cat(out) if out else noise.new_zeros((0, *noise.shape[1:]))

    def _denoise_batch(
        self, x: torch.Tensor, ts: list[int], hook: StepHook | None, condition: Condition = None, decode: bool = True
    ) -> torch.Tensor:
        dev = self.device()
        ac = self.alphas_cumprod.to(torch.float64)
        x = x.to(dev, torch.float32)
        denoiser = self.model.denoiser
        was_training = denoiser.training
        denoiser.eval()
        previous: tuple[torch.Tensor, float] | None = None  # DPM-Solver++: the last x0 and its λ
        try:
            for i, t in enumerate(ts):
                if hook is not None:
                    hook(t, x)
                eps = self.model.predict_noise(x, t, condition).to(torch.float32)
                a_t = float(ac[t])
                a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
                x0 = (x - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5
                if self.clip_sample:
                    x0 = x0.clamp(-1.0, 1.0)
                    eps = (x - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5
                if self.solver == "ddim" or a_prev >= 1.0:
                    x = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
                else:
                    x, previous = _dpmsolver_pp_2m(x, x0, a_t, a_prev, previous)
            if not decode:
                return x.cpu()
            images = self.model.decode(x)
        finally:
            denoiser.train(was_training)
        return images.clamp(-1.0, 1.0).cpu()


def _lambda(a: float) -> float:
    """λ = log(α/σ) of ᾱ = a (half the log-SNR)."""
    return 0.5 * (math.log(a) - math.log1p(-a))


def _dpmsolver_pp_2m(
    x: torch.Tensor, x0: torch.Tensor, a_t: float, a_next: float, previous: tuple[torch.Tensor, float] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, float]]:
    """One DPM-Solver++(2M) step from ᾱ = ``a_t`` to ``a_next`` (Lu et al. 2022, data prediction, multistep):

    x_next = (σ_next/σ_t)·x − α_next·(e^{−h} − 1)·D, h = λ_next − λ_t, with D = x0 on the first step and
    D = (1 + 1/(2r))·x0 − 1/(2r)·x0_prev, r = h_prev/h, after it. Returns the new x and (x0, λ_t) for the next step.
    """
    lam_t, lam_next = _lambda(a_t), _lambda(a_next)
    h = lam_next - lam_t
    if previous is None:
        d = x0
    else:
        x0_prev, lam_prev = previous
        r = (lam_t - lam_prev) / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
    sigma_ratio = ((1.0 - a_next) / (1.0 - a_t)) ** 0.5
    x_next = sigma_ratio * x - a_next**0.5 * math.expm1(-h) * d
    return x_next, (x0, lam_t)
