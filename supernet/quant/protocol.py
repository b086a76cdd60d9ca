"""The common protocol of every quantizer: fit parameters from data, then map tensors to codes and back.

A quantizer object holds only *how* to fit (symmetric or not, range method); the fitted parameters are an
immutable :class:`QParams` value that carries the arithmetic. Nothing here changes state during a forward pass.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch

from search.candidate import FP_BITS

#: Bit-widths a quantizer accepts (16 and 32 mean "leave in floating point" and are never fitted).
QUANT_BITS = tuple(range(2, 9))

RangeMethod = Literal["minmax", "mse"]
QuantKind = Literal["uniform", "log2"]


def is_fp(bits: int) -> bool:
    """True when ``bits`` means "not quantized" (16 or 32)."""
    return bits in FP_BITS


def check_bits(bits: int) -> int:
    """Return ``bits`` if a quantizer can fit it (2..8), else raise ``ValueError``."""
    if bits not in QUANT_BITS:
        raise ValueError(f"bit-width {bits} cannot be quantized (supported: 2..8; 16/32 mean FP)")
    return bits


@runtime_checkable
class QParams(Protocol):
    """Fitted parameters of one tensor (or one channel-wise weight): integer codes + scale (+ zero-point).

    ``fake_quantize(x) == dequantize(quantize(x))`` exactly, and ``split(x)`` returns ``(q, s)`` with
    ``fake_quantize(x) == q * s`` (``s is None`` when no scale can be factored out): layers use it to fold
    the scale into the cheaper operand.
    """

    bits: int

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x``."""
        ...

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Float values of integer ``codes``."""
        ...

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))`` in one pass of float arithmetic."""
        ...

    def split(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
        """``(q, s)`` with ``q * s == fake_quantize(x)``; ``s`` is ``None`` if nothing factors out.

        ``out`` (same shape as ``x``, may be ``x`` itself) is where ``q`` may be written instead of a new tensor
        (per-tensor parameters do; use the returned tensor either way).
        """
        ...


class Quantizer(Protocol):
    """Fits :class:`QParams` for a bit-width from sample data."""

    kind: str

    def fit(self, x: torch.Tensor, bits: int) -> QParams:
        """Parameters for ``bits`` chosen from the values of ``x``."""
        ...
