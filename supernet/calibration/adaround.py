"""AdaRound (Nagel et al. 2020) for one per-output-channel uniform weight quantizer.

Each weight element rounds down or up: ``code = clamp(floor(w/s) + h(V) + z, qmin, qmax)`` with the rectified
sigmoid ``h(V) = clamp(σ(V)·(ζ-γ) + γ, 0, 1)``, ζ = 1.1, γ = -0.1, learned by gradient descent on the block's
output error; the regulariser ``Σ 1 - |2h(V) - 1|^β`` (β annealed from 20 to 2) pushes every ``h`` to 0 or 1.
Hardening takes ``h ≥ 0.5`` (``V ≥ 0``) as "up". The scale and zero-point stay those of the initial fit.

``V`` starts where ``h`` equals the fractional part of ``w/s`` (the soft weight equals the FP weight), or, when a
previous rounding is given (a later PAR round), at ``h = 0.1`` / ``0.9`` on that rounding's side: close to it,
still able to flip.

The soft weight and the regulariser are one autograd node each with their gradients in closed form (the same as the
chain of elementary operators up to float rounding, without ``clamp``'s slow backward kernel), since they run for
every weight of a block at every reconstruction step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams

ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END = 20.0, 2.0
#: How far a warm start sits from the previous hard decision (h = 0.1 or 0.9).
WARM_MARGIN = 0.1


def _rectified(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h(V)`` and ``∂h/∂V`` (zero where the clamp is active)."""
    sig = torch.sigmoid(v)
    h = sig * (ZETA - GAMMA) + GAMMA
    hc = h.clamp(0.0, 1.0)
    dh = sig.mul_(1.0 - sig).mul_(ZETA - GAMMA).mul_(torch.eq(h, hc))
    return hc, dh


class _SoftWeight(torch.autograd.Function):
    """``(clamp(floor + h(V) + z, qmin, qmax) - z) · s`` and its gradient with respect to ``V``."""

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, floor_z: torch.Tensor, lo: float, hi: float, z: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        h, dh = _rectified(v)
        code = h.add_(floor_z)
        clamped = code.clamp(lo, hi)
        ctx.save_for_backward(dh.mul_(torch.eq(clamped, code)).mul_(s))
        return clamped.sub_(z).mul_(s)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dw,) = ctx.saved_tensors
        return grad * dw, None, None, None, None, None


class _Regulariser(torch.autograd.Function):
    """``Σ 1 - |2h(V) - 1|^β`` and its gradient with respect to ``V``."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, beta: float) -> torch.Tensor:
        h, dh = _rectified(v)
        u = h.mul_(2.0).sub_(1.0)
        mag = u.abs()
        # ∂/∂V of -|u|^β: -β |u|^(β-1) sign(u) · 2 ∂h/∂V
        ctx.save_for_backward(mag.pow(beta - 1.0).mul_(torch.sign(u)).mul_(dh).mul_(-2.0 * beta))
        return (1.0 - mag.pow_(beta)).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dr,) = ctx.saved_tensors
        return grad * dr, None


class AdaRoundWeight(nn.Module):
    """Learnable rounding of ``weight`` under fixed ``params``.

    Args:
        weight: the FP weight (as reparameterized, if it is); not modified.
        params: the fitted per-output-channel :class:`UniformParams`.
        previous: an earlier hard rounding (0/1 per element) to start from, or ``None``.
    """

    def __init__(self, weight: torch.Tensor, params: UniformParams, previous: torch.Tensor | None = None) -> None:
        super().__init__()
        self.params = params
        w = weight.detach().to(torch.float32)
        scaled = w / params.scale
        self.register_buffer("floor", torch.floor(scaled))
        self.register_buffer("floor_z", self.floor + params.zero_point)
        rest = scaled - self.floor if previous is None else previous.to(w) * (1.0 - 2 * WARM_MARGIN) + WARM_MARGIN
        rest = rest.clamp(1e-4, 1.0 - 1e-4)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        qmin, qmax = params.qrange
        self._lo, self._hi = float(qmin), float(qmax)

    def h(self) -> torch.Tensor:
        """The soft rounding offsets in [0, 1]."""
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def soft(self) -> torch.Tensor:
        """The differentiable dequantized weight."""
        z = self.params.zero_point
        return _SoftWeight.apply(self.v, self.floor_z, self._lo, self._hi, z, self.params.scale)

    def regulariser(self, beta: float) -> torch.Tensor:
        """``Σ 1 - |2h - 1|^β`` over the elements."""
        return _Regulariser.apply(self.v, beta)

    def rounding(self) -> torch.Tensor:
        """The hard decisions (1: round up), detached."""
        return (self.v.detach() >= 0).to(torch.float32)

    def harden(self) -> QuantizedTensor:
        """The integer codes of the hard rounding, as a :class:`QuantizedTensor`."""
        codes = torch.clamp(self.floor + self.rounding() + self.params.zero_point, self._lo, self._hi)
        return QuantizedTensor(codes.to(self.params.code_dtype), self.params)


def beta_at(step: int, total: int, warmup: float) -> float | None:
    """β of the regulariser at ``step`` of ``total`` (``None`` during the warm-up, when it is off)."""
    start = int(warmup * total)
    if step < start:
        return None
    progress = (step - start) / max(1, total - start)
    return BETA_END + (BETA_START - BETA_END) * (1.0 - progress)
