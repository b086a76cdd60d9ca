"""How long a calibration will take, estimated before it starts from the model's measured forward time.

Every phase of a calibration is a known amount of the model's work (:class:`CalibrationSettings` fixes it), so the
estimate times one FP forward of the denoiser at the reconstruction batch on this machine (a warm-up and
:data:`REPEATS` timed calls: well under a second for the testbed) and multiplies the time per sample by each
phase's sample count and a cost factor:

- ``trajectories``: ``grid_steps · samples`` FP forwards (once);
- ``prepare`` (TCR statistics): ``grid_steps · recon_samples`` observed forwards (once);
- ``ranges``: ``grid_steps · samples`` forwards that fit every activation quantizer on the way;
- ``reconstruction``: per round, the optimiser's steps (each a forward and backward of one block through
  differentiable quantizers: summed over the blocks, about one whole-model forward of ``recon_batch`` samples
  per step) plus capturing the blocks' inputs and targets (``grid_steps · recon_samples`` samples, each block's
  input through the quantized model up to it);
  with ``grad_align``, each outer step (one every ``grad_align_every`` steps, from the first) costs
  :data:`GRAD_ALIGN_OUTER` steps more (its held-out group gradients and two double-backward passes: measured on the
  testbed at the default pool, one torch thread, as CPU seconds per call against the plain steps);
- ``par-trajectories``: ``grid_steps · samples`` fake-quantized forwards per later PAR round;
- ``report`` (:mod:`supernet.calibration.report`): the FP model and each uniform bit option sampled on the report's
  schedule, one ranking forward per site (or block) and bit option; plus the plain range fit's W8A8 when it is
  checked (``ranges`` and two samplings).

The factors were fitted on the 2-core development machine (AMD EPYC, 2 torch threads) to the phase times of the
shipped testbed's calibration (``calibration_metadata["phase_seconds"]``) against its forward time (1.5 ms per
sample at batch 32); ``bench/calibration.py`` reports the estimate against the measured time, on the testbed and on
a differently shaped model, so the factors can be checked on other machines. A bit option costs what its
reconstruction steps cost (``recon_iters_wide`` shortens the wide ones; a step that learns no rounding costs
:data:`ACT_ONLY_STEP` of one that does); fake quantization runs in float at every width.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from supernet.calibration.reconstruction import ReconOptions
from supernet.calibration.settings import CalibrationSettings
from supernet.models.base import DiffusionAdapter

if TYPE_CHECKING:
    from supernet.calibration.processes import WorkerPlan

#: Seconds per forward-sample of each phase, as multiples of one FP forward's time per sample (see the docstring).
COST_FACTORS: dict[str, float] = {
    "trajectories": 1.0,
    "prepare": 0.9,
    "ranges": 4.1,
    "recon_step": 7.1,
    "recon_capture": 1.1,
    "par-trajectories": 1.3,
    "report_sampling": 2.0,
    "report_ranking": 1.4,
}
#: A step that learns the activation step sizes alone (no AdaRound variables, no weight gradients: weights of
#: ``recon_round_below`` bits or more, later PAR rounds) as a fraction of one that learns the rounding too: measured on
#: the testbed at W8, 50 steps per block, 2 threads, two runs each (9.3 s against 11.9 s of steps).
ACT_ONLY_STEP = 0.78
#: The extra cost of one gradient-alignment outer step, in reconstruction steps (see the docstring).
GRAD_ALIGN_OUTER = 7.0
#: Timed forwards of the measurement (after one warm-up call).
REPEATS = 5


@dataclass(frozen=True)
class CalibrationEstimate:
    """A calibration's estimated seconds, in total, per bit option and per phase.

    Attributes:
        seconds: the whole calibration (trajectories, prepare and every bit option), wall-clock: with worker
            processes, the slowest worker's bit options plus its start.
        per_bits: each bit option's seconds (in its worker, at the worker's thread count, if any).
        phases: seconds by phase over the whole calibration (the once-per-supernet ``trajectories`` and
            ``prepare``, then the bit options' phases summed: work, not wall-clock, with workers).
        forward_ms_per_sample: the measured FP forward time per sample the estimate scales.
        plan: the worker processes that will calibrate the bit options (``calibration.workers``), if any.
    """

    seconds: float
    per_bits: dict[int, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    forward_ms_per_sample: float = 0.0
    plan: WorkerPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, seconds rounded to 0.1 s."""
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 1),
            "per_bits": {str(b): round(v, 1) for b, v in self.per_bits.items()},
            "phases": {k: round(v, 1) for k, v in self.phases.items()},
            "forward_ms_per_sample": round(self.forward_ms_per_sample, 4),
        }
        if self.plan is not None:
            out["workers"] = self.plan.to_dict()
        return out


def forward_seconds_per_sample(model: DiffusionAdapter, batch: int, timestep: int | None = None) -> float:
    """The FP denoiser's seconds per sample at ``batch`` (median of :data:`REPEATS` calls after a warm-up) at
    ``timestep`` (default: the middle of the model's training schedule)."""
    shape = (batch, *model.sample_shape)
    param = next(model.denoiser.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(model.device, dtype)
    cond = model.condition_for(batch)
    t = model.num_train_timesteps // 2 if timestep is None else timestep
    times = []
    with torch.no_grad():
        for i in range(REPEATS + 1):
            start = time.perf_counter()
            model.predict_noise(x, t, cond)
            if x.device.type == "cuda":
                torch.cuda.synchronize(x.device)
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def reconstruction_steps(settings: CalibrationSettings, bits: int = 0) -> list[int]:
    """Optimiser steps per block of each reconstruction round at ``bits`` (as :class:`ReconOptions` computes them)."""
    if not settings.reconstruction or settings.recon_iters == 0:
        return []
    rounds = settings.par_rounds if settings.par else 1
    pool = settings.grid_steps * min(settings.recon_samples, settings.samples)
    return [ReconOptions.from_settings(settings, r, bits).steps_for(pool) for r in range(rounds)]


def estimate_calibration(
    model: DiffusionAdapter,
    bit_options: Sequence[int],
    settings: CalibrationSettings,
    blocks: int | None = None,
    timestep: int | None = None,
) -> CalibrationEstimate:
    """The estimated seconds of calibrating ``bit_options`` of ``model`` with ``settings``.

    ``blocks``: the reconstruction's block count (default: the adapter's blocks that hold a layer, which is what
    the ``tcaq`` strategy reconstructs); it scales the capture of block inputs. ``timestep``: where the forward is
    timed (default: mid-schedule; a bare module without a schedule needs one, e.g. its data's).
    """
    from supernet.calibration.processes import WORKER_START_SECONDS, decide_workers

    per_sample = forward_seconds_per_sample(model, settings.recon_batch, timestep)
    blocks = blocks or _blocks(model)
    estimate = estimate_from_forward(per_sample, bit_options, settings, blocks, _ranked(model))
    threads = torch.get_num_threads()
    plan = decide_workers(model, bit_options, settings, estimate, threads)
    if plan is None:
        return estimate
    torch.set_num_threads(plan.threads)
    try:  # a worker's thread share: its bit options cost what the forward costs at that share
        per_worker = forward_seconds_per_sample(model, settings.recon_batch, timestep)
    finally:
        torch.set_num_threads(threads)
    slower = per_worker / per_sample
    per_bits = {b: v * slower for b, v in estimate.per_bits.items()}
    once = sum(v for k, v in estimate.phases.items() if k in ("trajectories", "prepare", "report"))
    seconds = once + WORKER_START_SECONDS + max(sum(per_bits[b] for b in group) for group in plan.groups)
    if plan.automatic and seconds >= estimate.seconds:
        return estimate  # the automatic mode takes workers only where they are estimated to finish sooner
    return CalibrationEstimate(seconds, per_bits, estimate.phases, estimate.forward_ms_per_sample, plan)


def estimate_from_forward(
    per_sample: float,
    bit_options: Sequence[int],
    settings: CalibrationSettings,
    blocks: int,
    sites: int = 0,
) -> CalibrationEstimate:
    """:func:`estimate_calibration` from a forward time per sample already measured (``sites``: the report ranks
    this many sites or blocks; 0 leaves the report out)."""
    from supernet.calibration.report import (
        CHECK_BITS,
        RANKING_SAMPLES,
        RANKING_TIMESTEPS,
        REPORT_SAMPLES,
        REPORT_STEPS,
    )

    f, s = per_sample, settings
    grid = s.grid_steps
    recon_samples = min(s.recon_samples, s.samples)
    phases = {
        "trajectories": COST_FACTORS["trajectories"] * f * grid * s.samples,
        "prepare": COST_FACTORS["prepare"] * f * grid * recon_samples if (s.strategy == "tcaq" and s.tcr) else 0.0,
    }
    sampling = COST_FACTORS["report_sampling"] * f * REPORT_SAMPLES * REPORT_STEPS
    per_bits: dict[int, float] = {}
    for bits in bit_options:
        mine = {"ranges": COST_FACTORS["ranges"] * f * grid * s.samples}
        if s.strategy == "tcaq":
            capture = COST_FACTORS["recon_capture"] * f * grid * recon_samples * (1 + blocks / 2)
            steps = reconstruction_steps(s, bits)
            if s.grad_align:
                steps = [n + GRAD_ALIGN_OUTER * math.ceil(n / s.grad_align_every) for n in steps]
            learns = [ReconOptions.from_settings(s, r, bits).round_weights for r in range(len(steps))]
            mine["reconstruction"] = sum(
                COST_FACTORS["recon_step"] * (1.0 if lr else ACT_ONLY_STEP) * f * n * s.recon_batch + capture
                for lr, n in zip(learns, steps, strict=True)
            )
            later_rounds = (s.par_rounds - 1) if s.par else 0
            mine["par-trajectories"] = later_rounds * COST_FACTORS["par-trajectories"] * f * grid * s.samples
        mine = {k: v * s.restarts for k, v in mine.items()}
        if s.restarts > 1:  # each restart is judged on the report's schedule, against FP sampled once per restart
            mine["restarts"] = s.restarts * 2 * sampling
        per_bits[int(bits)] = sum(mine.values())
        for k, v in mine.items():
            phases[k] = phases.get(k, 0.0) + v
    if sites:
        ranking = COST_FACTORS["report_ranking"] * f * sites * RANKING_TIMESTEPS * RANKING_SAMPLES * s.report_ranking
        phases["report"] = (1 + len(bit_options)) * sampling + len(bit_options) * ranking
        if CHECK_BITS in bit_options and s.strategy != "range":
            phases["report"] += COST_FACTORS["ranges"] * f * grid * s.samples + 2 * sampling
    return CalibrationEstimate(sum(phases.values()), per_bits, phases, f * 1e3)


def _ranked(model: DiffusionAdapter) -> int:
    """What the report ranks: about one entry per layer (convolutions, linear layers, attention matmuls), or per
    block above :data:`~supernet.calibration.report.MAX_RANKED_SITES` (0 for a model that cannot sample)."""
    from supernet.calibration.report import MAX_RANKED_SITES, report_unavailable

    if report_unavailable(model) is not None:
        return 0
    layers = sum(1 for m in model.denoiser.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return layers if layers <= MAX_RANKED_SITES else _blocks(model)


def _blocks(model: DiffusionAdapter) -> int:
    """The reconstruction's blocks: the adapter's blocks (``block_of``) that hold a convolution or linear layer."""
    layers = (n for n, m in model.denoiser.named_modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return max(1, len({model.block_of(n) for n in layers}))
