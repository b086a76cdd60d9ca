"""Log2 quantization for values in [0, 1] (post-softmax attention probabilities).

``code = clamp(round(-log2(x / s)), 0, 2^b - 2)`` represents ``s · 2^-code``; the last code ``2^b - 1`` is zero
(values below the smallest level, and ``x <= 0``). An integer kernel reproduces it with shifts: ``x̂ = s >> code``.
DAQ (a later calibration strategy) chooses per site and bit-width between this and the uniform quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from supernet.quant.protocol import RangeMethod, check_bits
from supernet.quant.uniform import HALF_DTYPES, lp_error
from supernet.settings import RANGE_METHODS

_TINY = 1e-12


@dataclass(frozen=True, eq=False)
class Log2Params:
    """Scale ``s`` (the largest level) and ``bits`` of a per-tensor log2 quantizer."""

    scale: float
    bits: int

    def __post_init__(self) -> None:
        check_bits(self.bits)
        object.__setattr__(self, "scale", float(torch.tensor(max(float(self.scale), _TINY), dtype=torch.float32)))

    @property
    def zero_code(self) -> int:
        """The code that means exactly zero."""
        return 2**self.bits - 1

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8

    def _levels(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``round(-log2(x / s))`` as float; ``+inf`` for ``x <= 0``."""
        lv = torch.div(x, self.scale) if out is None else torch.div(x, self.scale, out=out)
        return lv.clamp_min_(0.0).log2_().neg_().round_().clamp_min_(0.0)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        lv = self._levels(x)
        return lv.masked_fill_(lv > self.zero_code - 1, self.zero_code).to(self.code_dtype)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        c = codes.to(torch.float32)
        out = torch.exp2(c.neg()).mul_(self.scale)
        return out.masked_fill_(c >= self.zero_code, 0.0)

    def fake_quantize(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype in HALF_DTYPES:  # levels from float32 logarithms, as for the uniform quantizer
            return self.fake_quantize(x.float()).to(x.dtype)
        lv = self._levels(x, out)
        zero = lv > self.zero_code - 1
        return lv.neg_().exp2_().mul_(self.scale).masked_fill_(zero, 0.0)

    def split(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
        return self.fake_quantize(x, out), None


@dataclass(frozen=True)
class Log2Quantizer:
    """Fits :class:`Log2Params`: ``s = max(x)`` (min-max) or the ``s`` among ``max(x) · ratio`` with least error.

    Args:
        method: ``"minmax"`` or ``"mse"``.
        grid: number of ratios tried by ``"mse"``, evenly spaced in ``[min_ratio, 1]``.
        min_ratio: smallest ratio tried.
        norm: the error is ``mean |x - x̂|^norm``.
        max_elems: the MSE search uses at most this many (strided) elements.
    """

    method: RangeMethod = "minmax"
    grid: int = 20
    min_ratio: float = 0.5
    norm: float = 2.0
    max_elems: int = 1 << 16
    kind: str = field(default="log2", init=False)

    def __post_init__(self) -> None:
        if self.method not in RANGE_METHODS:
            raise ValueError(f"method must be one of {RANGE_METHODS}, got {self.method!r}")
        if self.grid < 1 or not 0.0 < self.min_ratio <= 1.0 or self.norm <= 0 or self.max_elems < 1:
            raise ValueError("grid >= 1, 0 < min_ratio <= 1, norm > 0 and max_elems >= 1 are required")

    def fit(self, x: torch.Tensor, bits: int) -> Log2Params:
        """Parameters for ``bits`` fitted to ``x`` (expected in [0, 1])."""
        check_bits(bits)
        x = x.detach().to(torch.float32)
        top = float(x.max()) if x.numel() else 1.0
        if self.method == "minmax":
            return Log2Params(top, bits)
        flat = x.reshape(-1)
        if flat.numel() > self.max_elems:
            flat = flat[:: -(-flat.numel() // self.max_elems)]
        best, best_err = Log2Params(top, bits), float("inf")
        for r in torch.linspace(1.0, self.min_ratio, self.grid).tolist():
            p = Log2Params(top * r, bits)
            err = float(lp_error(p.fake_quantize(flat), flat, self.norm, dim=0))
            if err < best_err:
                best, best_err = p, err
        return best
