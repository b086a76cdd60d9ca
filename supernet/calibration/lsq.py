"""Learned activation step sizes (LSQ, Esser et al. 2020) for one operand's per-timestep table.

During block reconstruction a batch mixes grid timesteps, so every sample uses its own timestep's parameters.
A uniform entry ``(s_t, z_t)`` is learned as ``s_t = s0_t · exp(θ_t)`` (θ starts at 0; the log form keeps the
step positive and makes one learning rate fit every scale) with the zero-point held at its initial integer, and
the rounding passes gradients straight through, so ``∂x̂/∂s`` is LSQ's. Log2 entries (DAQ's choice for
power-law-like probabilities) keep their fitted scale and pass gradients to the input straight through.

Both run as one autograd node each (:class:`_UniformSTE`, :class:`_Log2STE`) with their gradients in closed form:
the same values and gradients as the chain of elementary operators (divide, round with a straight-through estimator,
add, clamp, subtract, multiply) up to float rounding, in fewer passes over the tensor and without ``clamp``'s
backward, whose ``where`` kernel costs as much as twenty additions on these CPUs (measured in
``docs/calibration-profile.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from supernet.errors import CalibrationError
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import QParams
from supernet.quant.uniform import HALF_DTYPES, UniformParams, code_range

_TINY = 1e-12


class _UniformSTE(torch.autograd.Function):
    """``(clamp(round(x / s) + z, lo, hi) - z) · s`` with LSQ's gradients: ``∂/∂x`` is 1 where the code is inside
    ``[lo, hi]`` and 0 outside; ``∂/∂s`` is ``round(x/s) - x/s`` inside and the clamped code minus ``z`` outside,
    summed per sample (``s`` and ``z`` hold one value per leading index)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        v = x / s
        code = torch.round(v).add_(z)
        q = code.clamp(lo, hi)
        inside = torch.eq(q, code).to(x.dtype)
        q.sub_(z)
        out = q * s
        ctx.save_for_backward(inside, v.mul_(inside).neg_().add_(q))  # v's buffer reused for ∂out/∂s
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inside, ds = ctx.saved_tensors
        gx = grad * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            gs = (grad * ds).sum(tuple(range(1, grad.dim())), keepdim=True)
        return gx, gs, None, None, None


class _Log2STE(torch.autograd.Function):
    """Log2 fake quantization with per-sample scales ``s`` (:class:`~supernet.quant.log2.Log2Params`'s levels),
    the gradient passed to ``x`` unchanged (straight through)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, zero_code: int) -> torch.Tensor:
        lv = torch.div(x, s).clamp_min_(_TINY).log2_().neg_().round_().clamp_min_(0.0)
        zero = (lv > zero_code - 1).logical_or_(x <= 0)
        return lv.neg_().exp2_().mul_(s).masked_fill_(zero, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return grad, None, None


class TimestepActQuant(nn.Module):
    """Differentiable fake quantization of one operand with per-timestep parameters.

    Args:
        table: the operand's parameters per grid timestep (all of one bit-width; uniform or log2 each).
        learn: learn the uniform step sizes (else they are fixed; gradients still reach the input).
    """

    _uniform = staticmethod(_UniformSTE.apply)
    _log2 = staticmethod(_Log2STE.apply)

    def __init__(self, table: Sequence[QParams], learn: bool = True) -> None:
        super().__init__()
        bits = {p.bits for p in table}
        if len(bits) != 1:
            raise CalibrationError(f"one bit-width per table expected, got {sorted(bits)}")
        self.bits = bits.pop()
        uniform = [p for p in table if isinstance(p, UniformParams)]
        symmetric = {p.symmetric for p in uniform}
        if len(symmetric) > 1:
            raise CalibrationError("a table mixes symmetric and asymmetric parameters")
        self.symmetric = symmetric.pop() if symmetric else False
        self._lo, self._hi = (float(v) for v in code_range(self.bits, self.symmetric))
        is_log = [isinstance(p, Log2Params) for p in table]
        if not all(isinstance(p, UniformParams | Log2Params) for p in table):
            raise CalibrationError("only uniform and log2 parameters can be learned")
        self.register_buffer("is_log", torch.tensor(is_log))
        self.register_buffer("scale0", torch.tensor([float(p.scale) for p in table]))
        self.register_buffer(
            "zero",
            torch.tensor(
                [
                    0.0 if lg else float(p.zero_point)  # type: ignore[union-attr]
                    for p, lg in zip(table, is_log, strict=True)
                ]
            ),
        )
        self.log_mult = nn.Parameter(torch.zeros(len(table)), requires_grad=learn)
        self.any_log, self.any_uniform = any(is_log), not all(is_log)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` whose leading dimension is the batch of ``idx`` (grid indices), possibly repeated
        per attention head (``batch·heads``, batch-major). A half-precision ``x`` is quantized in float32 and the
        result cast back (as :mod:`supernet.quant.uniform` does)."""
        dtype = x.dtype
        if dtype in HALF_DTYPES:
            x = x.float()
        rep = x.shape[0] // idx.numel()
        if rep * idx.numel() != x.shape[0]:
            raise CalibrationError(f"a leading dimension of {x.shape[0]} does not fit a batch of {idx.numel()}")
        if rep > 1:
            idx = idx.repeat_interleave(rep)
        shape = (-1,) + (1,) * (x.dim() - 1)
        out = None
        if self.any_uniform:
            s = (self.scale0[idx] * torch.exp(self.log_mult[idx])).view(shape)
            out = self._uniform(x, s, self.zero[idx].view(shape), self._lo, self._hi)
        if self.any_log:
            log_out = self._log2(x, self.scale0[idx].view(shape), 2**self.bits - 1)
            out = log_out if out is None else torch.where(self.is_log[idx].view(shape), log_out, out)
        assert out is not None
        return out.to(dtype)

    def table(self) -> list[QParams]:
        """The (learned) parameters per grid timestep, as the supernet stores them."""
        out: list[QParams] = []
        with torch.no_grad():
            scales = self.scale0 * torch.exp(self.log_mult)
            for i, lg in enumerate(self.is_log.tolist()):
                if lg:
                    out.append(Log2Params(float(self.scale0[i]), self.bits))
                else:
                    out.append(UniformParams(scales[i].clone(), self.zero[i].clone(), self.bits, self.symmetric))
        return out
