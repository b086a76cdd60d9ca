"""A table of quantized temporal features: one row per absolute timestep, looked up instead of computed.

A ResBlock's time-embedding projection depends on the timestep only, and the timestep comes from a finite set, so
its output can be computed once per timestep, quantized, and read at run time (TFMQ-DM, journal version; built by
:mod:`supernet.calibration.temporal`). A :class:`TemporalTable` holds those rows as integer codes with a scale and
zero-point per row (per timestep); its values are dequantized once at construction, so a table rebuilt from the
same codes and parameters (an artifact, an export) is bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from supernet.errors import CalibrationError
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams


class TemporalTable:
    """Quantized features ``(len(timesteps), features)`` of one site at one bit-width, by absolute timestep.

    Args:
        timesteps: the absolute timestep of each row (distinct).
        rows: the codes and per-row parameters (scale and zero-point of shape ``(rows, 1)``).
    """

    __slots__ = ("_row", "_values", "rows", "timesteps")

    def __init__(self, timesteps: Sequence[int], rows: QuantizedTensor) -> None:
        self.timesteps = tuple(int(t) for t in timesteps)
        if len(rows.shape) != 2 or rows.shape[0] != len(self.timesteps):
            raise CalibrationError(
                f"a temporal table needs one row of codes per timestep, got "
                f"{rows.shape} for {len(self.timesteps)} timesteps"
            )
        self._row = {t: i for i, t in enumerate(self.timesteps)}
        if len(self._row) != len(self.timesteps):
            raise CalibrationError("a temporal table's timesteps must be distinct")
        self.rows = rows
        self._values = rows.dequantize()

    @property
    def bits(self) -> int:
        return self.rows.bits

    @property
    def values(self) -> torch.Tensor:
        """The dequantized features, one row per timestep (read-only by convention)."""
        return self._values

    def __len__(self) -> int:
        return len(self.timesteps)

    def row(self, t: int | None) -> torch.Tensor:
        """The features of timestep ``t``; :class:`CalibrationError` when ``t`` has no row."""
        i = self._row.get(t) if t is not None else None
        if i is None:
            what = (
                "no timestep selected (run the denoiser at one t)"
                if t is None
                else (f"no cached temporal feature for timestep {t}")
            )
            raise CalibrationError(what)
        return self._values[i]

    def lookup(self, t: int | None, batch_shape: Sequence[int], like: torch.Tensor | None = None) -> torch.Tensor:
        """A fresh ``(*batch_shape, features)`` tensor holding timestep ``t``'s row in every position (in ``like``'s
        dtype and on its device when given)."""
        v = self.row(t)
        if like is not None:
            v = v.to(device=like.device, dtype=like.dtype)
        return v.expand(*batch_shape, v.shape[-1]).clone()

    def subset(self, timesteps: Sequence[int]) -> TemporalTable:
        """The rows of ``timesteps`` only (same codes and parameters, so the same values)."""
        idx = torch.tensor([self._row[int(t)] for t in timesteps], dtype=torch.long, device=self.rows.device)
        p = self.rows.params
        params = UniformParams(p.scale[idx], p.zero_point[idx], p.bits, p.symmetric)
        return TemporalTable(timesteps, QuantizedTensor(self.rows.codes[idx], params))

    def to(self, device: str | torch.device) -> TemporalTable:
        """This table on ``device``."""
        return TemporalTable(self.timesteps, self.rows.to(device))

    def __repr__(self) -> str:
        return f"TemporalTable(bits={self.bits}, timesteps={len(self)}, features={self.rows.shape[1]})"
