"""Calibration data: the FP model's denoising inputs ``x_t`` on a grid of timesteps covering ``[0, T)``.

Collected once with :class:`~supernet.sampling.Sampler`'s ``hook`` and reusable (saved as safetensors with
a JSON description in the metadata); a strategy may collect again on a quantized model (PAR).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from search.errors import VersionMismatchError
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError
from supernet.models.base import DiffusionAdapter, NoiseSchedule
from supernet.sampling import Sampler

DATA_FORMAT_VERSION = 1


def calibration_grid(steps: int, num_train_timesteps: int, spacing: str = "linear") -> list[int]:
    """``steps`` distinct timesteps from ``T-1`` down to 0, evenly (``linear``) or denser near 0 (``quadratic``)."""
    last = num_train_timesteps - 1
    if steps < 1 or last < 0:
        raise CalibrationError(f"cannot place {steps} calibration timesteps in [0, {num_train_timesteps})")
    if steps == 1:
        return [last]
    u = np.linspace(1.0, 0.0, steps)
    raw = np.rint(last * (u**2 if spacing == "quadratic" else u)).astype(int)
    return sorted({int(t) for t in raw}, reverse=True)


@dataclass(frozen=True, eq=False)
class CalibrationData:
    """Inputs ``x_t`` per grid timestep.

    Attributes:
        timesteps: the grid, strictly descending.
        inputs: ``(len(timesteps), n, C, H, W)`` float32.
        alphas_cumprod: the model's ᾱ_t (lets a strategy re-run trajectories), if known.
        clip_sample: the sampler's x0 clipping.
        source: a JSON-ready description (settings, model hash) recorded in artifacts.
    """

    timesteps: tuple[int, ...]
    inputs: torch.Tensor
    alphas_cumprod: torch.Tensor | None = None
    clip_sample: bool = True
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ts = tuple(int(t) for t in self.timesteps)
        if not ts or any(a <= b for a, b in itertools.pairwise(ts)):
            raise CalibrationError(f"calibration timesteps must be non-empty and strictly descending: {list(ts)}")
        if self.inputs.dim() < 2 or self.inputs.shape[0] != len(ts) or self.inputs.shape[1] < 1:
            raise CalibrationError(f"inputs of shape {tuple(self.inputs.shape)} do not match {len(ts)} timesteps")
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "source", dict(self.source))

    @property
    def samples(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def schedule(self) -> NoiseSchedule | None:
        """The noise schedule the trajectories were run with (``None`` when the data carries none)."""
        if self.alphas_cumprod is None:
            return None
        return NoiseSchedule(self.alphas_cumprod, self.clip_sample)

    def items(self) -> list[tuple[int, int, torch.Tensor]]:
        """``(grid index, timestep, x_t batch)`` in grid order."""
        return [(i, t, self.inputs[i]) for i, t in enumerate(self.timesteps)]

    def subset(self, n: int) -> CalibrationData:
        """The first ``n`` samples of every timestep."""
        return CalibrationData(
            self.timesteps,
            self.inputs[:, :n],
            self.alphas_cumprod,
            self.clip_sample,
            {**self.source, "samples": min(n, self.samples)},
        )

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensors) with the description in its metadata."""
        tensors = {"inputs": self.inputs.contiguous()}
        if self.alphas_cumprod is not None:
            tensors["alphas_cumprod"] = self.alphas_cumprod.to(torch.float32).contiguous()
        meta = {
            "format_version": DATA_FORMAT_VERSION,
            "timesteps": list(self.timesteps),
            "clip_sample": self.clip_sample,
            "source": self.source,
        }
        save_file(tensors, str(path), metadata={"tmpq": json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str | Path) -> CalibrationData:
        """Read what :meth:`save` wrote; refuses another format version."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("tmpq", "{}"))
        if meta.get("format_version") != DATA_FORMAT_VERSION:
            raise VersionMismatchError(
                f"{path}: calibration data format {meta.get('format_version')!r} "
                f"is not supported (expected {DATA_FORMAT_VERSION})"
            )
        tensors = load_file(str(path))
        return cls(
            tuple(meta["timesteps"]),
            tensors["inputs"],
            tensors.get("alphas_cumprod"),
            bool(meta["clip_sample"]),
            meta.get("source", {}),
        )


def collect_inputs(sampler: Sampler, timesteps: Sequence[int], n: int, seed: int) -> torch.Tensor:
    """Run ``sampler`` over ``timesteps`` from the noise of ``seed`` and return every step's input ``x_t``.

    Returns ``(len(timesteps), n, C, H, W)``. Works on any model, FP or quantized (PAR re-collects this way).
    """
    seen: dict[int, list[torch.Tensor]] = {int(t): [] for t in timesteps}

    def hook(t: int, x: torch.Tensor) -> None:
        seen[int(t)].append(x.detach().to("cpu", torch.float32).clone())

    sampler.sample(list(timesteps), n, seed, hook=hook)
    return torch.stack([torch.cat(seen[int(t)]) for t in timesteps])


def collect_calibration_data(
    model: DiffusionAdapter,
    settings: CalibrationSettings,
    batch_size: int = 64,
    source: Mapping[str, Any] | None = None,
) -> CalibrationData:
    """The trajectories of ``model`` (as it is: normally FP) on the calibration grid of ``settings`` (``samples``
    from ``seed``), with the model's noise schedule."""
    schedule = model.schedule
    grid = calibration_grid(settings.grid_steps, schedule.num_train_timesteps, settings.grid_spacing)
    sampler = Sampler(model, batch_size)
    inputs = collect_inputs(sampler, grid, settings.samples, settings.seed)
    return CalibrationData(
        tuple(grid),
        inputs,
        schedule.alphas_cumprod.detach().clone(),
        schedule.clip_sample,
        {**settings.data_dict(), **dict(source or {})},
    )
