"""Per-tensor activation quantization with parameters per (bit-width, calibration-grid timestep)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from supernet.errors import CalibrationError
from supernet.qlayers.context import TimestepContext
from supernet.quant.protocol import QParams, is_fp

Gene = Literal["w", "a"]

#: Installed by a calibration session only: ``observer(quantizer, x)`` returns the parameters to use for ``x``
#: (and records them), or ``None`` to pass ``x`` through unquantized.
Observer = Callable[["ActQuantizer", torch.Tensor], QParams | None]


class ActQuantizer:
    """Fake-quantizes one activation operand of a site.

    ``tables[bits][i]`` are the parameters for grid timestep ``i`` (uniform or log2, possibly differing per
    timestep). :meth:`activate` only swaps a reference; a forward pass only reads.

    Args:
        site: the site name.
        role: ``"x"`` (a layer's input), ``"a"``/``"b"`` (first/second operand of an attention matmul).
        gene: which gene of the candidate sets this operand's width: ``"a"`` or ``"w"``.
        ctx: the shared timestep context.
    """

    __slots__ = ("_active", "_ctx", "_observer", "bits", "gene", "role", "site", "tables")

    def __init__(self, site: str, role: str, gene: Gene, ctx: TimestepContext) -> None:
        self.site = site
        self.role = role
        self.gene: Gene = gene
        self._ctx = ctx
        self.tables: dict[int, tuple[QParams, ...]] = {}
        self.bits = 32
        self._active: tuple[QParams, ...] | None = None
        self._observer: Observer | None = None

    @property
    def key(self) -> str:
        """``site:role``, unique within a supernet."""
        return f"{self.site}:{self.role}"

    @property
    def observing(self) -> bool:
        """True while a calibration session observes this operand."""
        return self._observer is not None

    @property
    def passthrough(self) -> bool:
        """True when this operand is left in floating point and no calibration is observing it."""
        return self._active is None and self._observer is None

    def activate(self, bits: int) -> None:
        """Use the parameters calibrated for ``bits`` (16/32: none)."""
        if is_fp(bits):
            self._active = None
        else:
            table = self.tables.get(bits)
            if table is None:
                raise CalibrationError(f"{self.key}: no activation parameters calibrated for {bits} bits")
            self._active = table
        self.bits = bits

    def set_observer(self, observer: Observer | None) -> None:
        """Calibration only: route every input through ``observer`` until reset with ``None``."""
        self._observer = observer

    def params(self) -> QParams | None:
        """The parameters the current forward pass uses (``None``: not quantized)."""
        active = self._active
        if active is None:
            return None
        index = self._ctx.index
        if index is None:
            raise CalibrationError(f"{self.key}: no timestep selected (run the denoiser at one t)")
        return active[index]

    def split(self, x: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, float | None]:
        """``(q, s)`` with ``q * s`` the fake-quantized ``x`` (``s`` None: ``q`` is already the value).

        ``inplace=True`` lets the quantizer overwrite ``x`` (only for tensors the caller owns).
        """
        p = self._observer(self, x) if self._observer is not None else self.params()
        if p is None:
            return x, None
        return p.split(x, x if inplace else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q, s = self.split(x)
        if s is None:
            return q
        return q.mul_(s) if q is not x else q * s
