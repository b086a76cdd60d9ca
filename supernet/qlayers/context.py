"""Which timestep the current forward pass runs at, and which calibration-grid timestep it uses.

The model adapter calls its denoiser as ``denoiser(x, t, ...)`` with a Python int; a forward pre-hook on the
denoiser records ``t`` and maps it to the nearest calibrated timestep, and a forward hook clears both again, so
activation quantizers read their parameters for the right grid timestep (and cached temporal features their row for
the exact ``t``) without anything being passed through diffusers' code. Quantizer state is never written here.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def timestep_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The single integer timestep of a ``denoiser(sample, timestep, ...)`` call, or ``None`` if there is none.

    A tensor timestep counts when all its entries are equal (a batch at one timestep).
    """
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    if torch.is_tensor(t):
        if t.numel() == 0:
            return None
        flat = t.reshape(-1)
        if t.numel() > 1 and not bool((flat == flat[0]).all()):
            return None
        return int(flat[0].item())
    return int(t)


class TimestepContext:
    """The calibration grid, and the timestep and grid index selected for the forward pass in progress."""

    def __init__(self) -> None:
        self.grid: tuple[int, ...] = ()
        self.index: int | None = None
        #: The absolute timestep of the forward pass in progress (``None``: none, or not one for the whole batch).
        self.timestep: int | None = None
        self._sorted: list[int] = []
        self._order: list[int] = []

    def set_grid(self, grid: Sequence[int]) -> None:
        """Set the calibrated timesteps (any order; indices refer to this order)."""
        self.grid = tuple(int(t) for t in grid)
        if len(set(self.grid)) != len(self.grid):
            raise ValueError(f"calibration grid has repeated timesteps: {list(self.grid)}")
        pairs = sorted((t, i) for i, t in enumerate(self.grid))
        self._sorted = [t for t, _ in pairs]
        self._order = [i for _, i in pairs]
        self.index = None
        self.timestep = None

    def nearest(self, t: int) -> int | None:
        """Index of the grid timestep nearest to ``t`` (ties go to the lower timestep); ``None`` if no grid."""
        if not self._sorted:
            return None
        pos = bisect.bisect_left(self._sorted, t)
        if pos == 0:
            return self._order[0]
        if pos == len(self._sorted):
            return self._order[-1]
        below, above = self._sorted[pos - 1], self._sorted[pos]
        return self._order[pos - 1] if t - below <= above - t else self._order[pos]

    def select(self, t: int | None) -> None:
        """Make ``t`` and its nearest grid timestep current (``None`` clears)."""
        self.index = None if t is None else self.nearest(t)
        self.timestep = t

    def install(self, denoiser: nn.Module) -> list[RemovableHandle]:
        """Hook ``denoiser`` so every call selects its timestep; returns the hook handles."""

        def pre(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.select(timestep_of(args, kwargs))

        def post(_module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
            self.index = None
            self.timestep = None

        return [
            denoiser.register_forward_pre_hook(pre, with_kwargs=True),
            denoiser.register_forward_hook(post, always_call=True),
        ]
