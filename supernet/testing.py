"""Helpers for tests of code built on the supernet: a toy timestep-conditioned net and tiny calibrations.

Torch-only and fast; nothing here is used by the library itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from supernet.calibration import CalibrationData, CalibrationSettings
from supernet.supernet import QuantSupernet
from supernet.zoo.testbed import testbed_unet

TOY_SHAPE = (1, 8, 8)
TESTBED_SHAPE = (1, 16, 16)

#: Small enough for unit tests: the plain range strategy (not the default TCAQ reconstruction), 3 grid timesteps,
#: 4 samples, a short MSE search.
#: Tests calibrate with this (or a variant): no error ranking in the report (a denoiser pass per site and width).
TINY_CALIB = CalibrationSettings(
    strategy="range", grid_steps=3, samples=4, mse_grid=12, act_max_elems=4096, report_ranking=False
)


class ToyNet(nn.Module):
    """conv 1→4 (3x3 on 8x8) → SiLU → linear 256→10, with a timestep-dependent shift so ``t`` matters.

    MACs per sample: conv 8·8·4·(1·3·3) = 2,304; linear 10·256 = 2,560.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        h = self.act(self.conv(x)) + float(t) / 1000.0
        return self.fc(h.flatten(1))


def toy_net(seed: int = 0) -> ToyNet:
    """A :class:`ToyNet` with weights from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return ToyNet().eval()


def random_data(
    shape: tuple[int, ...], grid: tuple[int, ...] = (900, 500, 100), n: int = 4, seed: int = 1
) -> CalibrationData:
    """Gaussian calibration inputs of ``shape`` on ``grid`` (no trajectories: for wiring tests)."""
    gen = torch.Generator().manual_seed(seed)
    return CalibrationData(grid, torch.randn((len(grid), n, *shape), generator=gen))


def calibrated_toy(bits: tuple[int, ...] = (4, 8), seed: int = 0) -> QuantSupernet:
    """A calibrated supernet over a fresh :class:`ToyNet`."""
    sn = QuantSupernet.build(toy_net(seed), bits, calib_settings=TINY_CALIB, sample_shape=TOY_SHAPE)
    sn.calibrate(random_data(TOY_SHAPE, n=8))
    return sn


def calibrated_testbed(bits: tuple[int, ...] = (4, 8), seed: int = 0) -> QuantSupernet:
    """A supernet over the testbed architecture (random weights) calibrated on random inputs."""
    sn = QuantSupernet.build(testbed_unet(seed).eval(), bits, calib_settings=TINY_CALIB)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 500, 0)))
    return sn


def write_feature_program(
    path: str | Path, channels: int, *, batch: int = 4, dynamic: bool = True, seed: int = 0
) -> Path:
    """Save a small random conv feature network (``channels`` → 16 features) as a ``torch.export`` program file, the
    format of a job's ``evaluation.features``; with ``dynamic=False`` its batch size is fixed at ``batch``."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    example = (torch.zeros(batch, channels, 8, 8),)
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    program = torch.export.export(net, example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return Path(path)


def params_key(p: object) -> tuple:
    """The values of quantizer parameters (uniform or log2), to compare two calibrations exactly."""
    scale = getattr(p, "scale")  # noqa: B009 (both kinds have one: a float or a tensor)
    zero = getattr(p, "zero_point", 0.0)
    return (
        type(p).__name__,
        getattr(p, "bits"),  # noqa: B009
        getattr(p, "symmetric", None),
        torch.as_tensor(scale).tolist(),
        torch.as_tensor(zero).tolist(),
    )
