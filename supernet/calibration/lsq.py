"""Learned activation step sizes (LSQ, Esser et al. 2020) for one operand's per-timestep table.

During block reconstruction a batch mixes grid timesteps, so every sample uses its own timestep's parameters.
A uniform entry ``(s_t, z_t)`` is learned as ``s_t = s0_t · exp(θ_t)`` (θ starts at 0; the log form keeps the
step positive and makes one learning rate fit every scale) with the zero-point held at its initial integer, and
the rounding passes gradients straight through, so ``∂x̂/∂s`` is LSQ's. Log2 entries (DAQ's choice for
power-law-like probabilities) keep their fitted scale and pass gradients to the input straight through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from supernet.errors import CalibrationError
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import QParams
from supernet.quant.uniform import HALF_DTYPES, UniformParams, code_range

_TINY = 1e-12


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class TimestepActQuant(nn.Module):
    """Differentiable fake quantization of one operand with per-timestep parameters.

    Args:
        table: the operand's parameters per grid timestep (all of one bit-width; uniform or log2 each).
        learn: learn the uniform step sizes (else they are fixed; gradients still reach the input).
    """

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
            z = self.zero[idx].view(shape)
            q = torch.clamp(_round_ste(x / s) + z, self._lo, self._hi) - z
            out = q * s
        if self.any_log:
            s = self.scale0[idx].view(shape)
            lv = torch.round(-torch.log2((x.detach() / s).clamp_min(_TINY))).clamp_min(0.0)
            zero_code = 2**self.bits - 1
            zero = (lv > zero_code - 1) | (x.detach() <= 0)
            fq = torch.where(zero, torch.zeros_like(lv), torch.exp2(-lv) * s)
            log_out = x + (fq - x).detach()
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
