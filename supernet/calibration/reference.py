"""The reconstruction's differentiable quantizers written as chains of elementary torch operators.

:mod:`~supernet.calibration.lsq` and :mod:`~supernet.calibration.adaround` run each quantizer as one autograd node
with closed-form gradients. These chains are what those nodes replace, kept as the reference: the tests check the
nodes against them (values and gradients), and ``bench/calibration.py`` calibrates the previous default with them
(:func:`operator_chains`) so that its side-by-side measures the nodes' speed too, as the code before them ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from supernet.calibration.adaround import AdaRoundWeight
from supernet.calibration.lsq import _TINY, TimestepActQuant


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def uniform_chain(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``(clamp(round(x / s) + z, lo, hi) - z) · s`` with a straight-through round (LSQ)."""
    return (torch.clamp(_round_ste(x / s) + z, lo, hi) - z) * s


def log2_chain(x: torch.Tensor, s: torch.Tensor, zero_code: int) -> torch.Tensor:
    """Log2 fake quantization with the gradient passed straight through to ``x``."""
    lv = torch.round(-torch.log2((x.detach() / s).clamp_min(_TINY))).clamp_min(0.0)
    zero = (lv > zero_code - 1) | (x.detach() <= 0)
    fq = torch.where(zero, torch.zeros_like(lv), torch.exp2(-lv) * s)
    return x + (fq - x).detach()


def soft_chain(a: AdaRoundWeight) -> torch.Tensor:
    """AdaRound's soft weight of ``a`` (its ``h`` is the operator chain already)."""
    z = a.params.zero_point
    return (torch.clamp(a.floor + a.h() + z, a._lo, a._hi) - z) * a.params.scale


def regulariser_chain(a: AdaRoundWeight, beta: float) -> torch.Tensor:
    """AdaRound's rounding regulariser of ``a``."""
    return (1.0 - (2.0 * a.h() - 1.0).abs().pow(beta)).sum()


@contextmanager
def operator_chains() -> Iterator[None]:
    """While open, reconstruction in this process runs the chains instead of the closed-form nodes (for a
    side-by-side of the code before them; not thread-safe, not for library use)."""
    saved = (TimestepActQuant._uniform, TimestepActQuant._log2, AdaRoundWeight.soft, AdaRoundWeight.regulariser)
    TimestepActQuant._uniform = staticmethod(uniform_chain)  # type: ignore[method-assign,assignment]
    TimestepActQuant._log2 = staticmethod(log2_chain)  # type: ignore[method-assign,assignment]
    AdaRoundWeight.soft = soft_chain  # type: ignore[method-assign]
    AdaRoundWeight.regulariser = regulariser_chain  # type: ignore[method-assign]
    try:
        yield
    finally:
        (TimestepActQuant._uniform, TimestepActQuant._log2, AdaRoundWeight.soft, AdaRoundWeight.regulariser) = saved
