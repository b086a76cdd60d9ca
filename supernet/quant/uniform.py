"""Uniform affine quantization: ``code = clamp(round(x / s) + z, qmin, qmax)``, ``x̂ = (code - z) · s``.

Per output channel for weights (``axis=0``), per tensor for activations (``axis=None``); symmetric (``z = 0``,
signed codes) or asymmetric (unsigned codes, zero exactly representable). ``1/s`` is computed once in float32
and multiplied, as an integer kernel does, so the float fast path and the integer codes agree bit for bit.

Fake quantization keeps the input's dtype and device. A half-precision input (bfloat16, float16) is rounded to codes
in float32 (its own mantissa would misplace ``x / s`` near a rounding boundary); the codes, integers of at most
eight bits, are exact in either half type, so the result is the float32 codes cast back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from supernet.quant.protocol import RangeMethod, check_bits
from supernet.settings import RANGE_METHODS

_EPS = 1e-8

#: Dtypes whose fake quantization rounds in float32 (see the module docstring).
HALF_DTYPES = (torch.float16, torch.bfloat16)


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer codes."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class UniformParams:
    """Scale and zero-point for ``bits`` (float32 values broadcastable to the quantized tensor).

    Per-tensor parameters (0-d ``scale``) are kept as Python floats only: a supernet holds one per (operand,
    bit-width, calibration timestep), hundreds of thousands on a large model, and a 0-d tensor costs about 0.7 KB
    where a float costs 24 bytes. ``scale`` and ``zero_point`` still read as (0-d float32) tensors, and the
    activation fast path costs three in-place passes and no tensor allocation for the constants. Immutable by
    convention; compared by identity.
    """

    __slots__ = ("_floats", "_inv", "_scale", "_zero", "bits", "symmetric")

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool) -> None:
        self.bits = bits
        self.symmetric = symmetric
        scale = torch.as_tensor(scale).detach().to(torch.float32).clamp_min(_EPS)
        zp = torch.as_tensor(zero_point).detach().to(torch.float32).round()
        inv = torch.reciprocal(scale)
        qmin, qmax = code_range(bits, symmetric)
        self._floats: tuple[float, float, float, float, float] | None = None
        self._scale: torch.Tensor | None = scale
        self._zero: torch.Tensor | None = zp
        self._inv: torch.Tensor | None = inv
        if scale.numel() == 1 and scale.dim() == 0:
            z = float(zp)
            self._floats = (float(inv), qmin - z, qmax - z, float(scale), z)
            self._scale = self._zero = self._inv = None

    @property
    def scale(self) -> torch.Tensor:
        """The scale (a fresh 0-d tensor for per-tensor parameters)."""
        if self._floats is not None:
            return torch.tensor(self._floats[3], dtype=torch.float32)
        assert self._scale is not None
        return self._scale

    @property
    def zero_point(self) -> torch.Tensor:
        """The zero-point, integral (a fresh 0-d tensor for per-tensor parameters)."""
        if self._floats is not None:
            return torch.tensor(self._floats[4], dtype=torch.float32)
        assert self._zero is not None
        return self._zero

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float]:
        """``(1/s, z, s)`` on ``device``: Python floats for per-tensor parameters."""
        if self._floats is not None:
            inv, _, _, s, z = self._floats
            return inv, z, s
        assert self._inv is not None and self._zero is not None and self._scale is not None
        return self._inv.to(device), self._zero.to(device), self._scale.to(device)

    @property
    def qrange(self) -> tuple[int, int]:
        return code_range(self.bits, self.symmetric)

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.int8 if self.symmetric else torch.uint8

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` (on ``x``'s device), rounded in float32."""
        qmin, qmax = self.qrange
        inv, zp, _ = self._tensors(x.device)
        q = torch.round(x.to(torch.float32) * inv) + zp
        return q.clamp_(qmin, qmax).to(self.code_dtype)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``(code - z) · s`` in float32, on the codes' device."""
        _, zp, scale = self._tensors(codes.device)
        return (codes.to(torch.float32) - zp) * scale

    def split(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
        """``(code - z, s)`` as float; only per-tensor parameters factor out a Python-float scale."""
        if self._floats is None:
            return self.fake_quantize(x), None
        inv, lo, hi, s, _ = self._floats
        if x.dtype in HALF_DTYPES:
            return torch.mul(x.float(), inv).round_().clamp_(lo, hi).to(x.dtype), s
        q = torch.mul(x, inv) if out is None else torch.mul(x, inv, out=out)
        return q.round_().clamp_(lo, hi), s

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self._floats is not None:
            q, s = self.split(x)
            return q.mul_(s)
        qmin, qmax = self.qrange
        inv, zp, scale = self._tensors(x.device)
        xf = x.float() if x.dtype in HALF_DTYPES else x
        out = torch.clamp(torch.round(xf * inv), qmin - zp, qmax - zp).mul_(scale)
        return out.to(x.dtype)

    def __repr__(self) -> str:
        kind = "per-tensor" if self._floats is not None else f"per-channel x{self.scale.numel()}"
        return f"UniformParams({kind}, bits={self.bits}, symmetric={self.symmetric})"


def lp_error(x_hat: torch.Tensor, x: torch.Tensor, norm: float, dim: int) -> torch.Tensor:
    """``mean |x̂ - x|^norm`` along ``dim`` (``x_hat`` is overwritten)."""
    diff = x_hat.sub_(x)
    diff = diff.square_() if norm == 2.0 else diff.abs_().pow_(norm)
    return diff.mean(dim=dim)


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> UniformParams:
    """Parameters that map ``[lo, hi]`` (element-wise, e.g. per channel) onto the code range."""
    qmin, qmax = code_range(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        return UniformParams(scale, torch.zeros_like(scale), bits, True)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return UniformParams(scale, zero_point, bits, False)


@dataclass(frozen=True)
class UniformQuantizer:
    """Fits :class:`UniformParams` by min-max or by an MSE search over clipping ratios of the min-max range.

    Args:
        symmetric: signed codes and zero-point 0, or unsigned codes with a zero-point.
        axis: the channel axis for per-channel parameters (0 for weights), ``None`` for per-tensor.
        method: ``"minmax"`` or ``"mse"``.
        grid: number of clipping ratios tried by ``"mse"``, evenly spaced in ``[min_ratio, 1]``.
        min_ratio: smallest clipping ratio tried.
        norm: the error is ``mean |x - x̂|^norm`` (2 = MSE).
        max_elems: per-tensor MSE search uses at most this many (strided) elements; the range itself always
            comes from the whole tensor.
    """

    symmetric: bool = False
    axis: int | None = None
    method: RangeMethod = "minmax"
    grid: int = 40
    min_ratio: float = 0.3
    norm: float = 2.0
    max_elems: int = 1 << 16
    kind: str = field(default="uniform", init=False)

    def __post_init__(self) -> None:
        if self.method not in RANGE_METHODS:
            raise ValueError(f"method must be one of {RANGE_METHODS}, got {self.method!r}")
        if self.grid < 1 or not 0.0 < self.min_ratio <= 1.0 or self.norm <= 0 or self.max_elems < 1:
            raise ValueError("grid >= 1, 0 < min_ratio <= 1, norm > 0 and max_elems >= 1 are required")
        if self.axis not in (0, None):
            raise ValueError("per-channel parameters are supported on axis 0 only")

    def fit(self, x: torch.Tensor, bits: int) -> UniformParams:
        """Parameters for ``bits`` fitted to ``x``."""
        check_bits(bits)
        x = x.detach().to(torch.float32)
        if self.axis is None:
            return self._fit_tensor(x, bits)
        return self._fit_channels(x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1), bits, x.dim())

    def _fit_tensor(self, x: torch.Tensor, bits: int) -> UniformParams:
        lo, hi = torch.aminmax(x)
        if self.method == "minmax":
            return params_from_range(lo, hi, bits, self.symmetric)
        flat = x.reshape(-1)
        if flat.numel() > self.max_elems:
            flat = flat[:: -(-flat.numel() // self.max_elems)]
        ratios = self._ratios(x.device)
        cand = params_from_range(lo * ratios, hi * ratios, bits, self.symmetric)  # (R,) per-ratio parameters
        per_ratio = UniformParams(cand.scale[:, None], cand.zero_point[:, None], bits, self.symmetric)
        err = lp_error(per_ratio.fake_quantize(flat[None, :]), flat[None, :], self.norm, dim=1)
        best = int(torch.argmin(err))
        return params_from_range(lo * ratios[best], hi * ratios[best], bits, self.symmetric)

    def _fit_channels(self, rows: torch.Tensor, bits: int, ndim: int) -> UniformParams:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.method == "mse":
            best_err = torch.full_like(lo, float("inf"))
            best_ratio = torch.ones_like(lo)
            for r in self._ratios(rows.device).tolist():
                p = params_from_range(lo * r, hi * r, bits, self.symmetric)
                p = UniformParams(p.scale[:, None], p.zero_point[:, None], bits, self.symmetric)
                err = lp_error(p.fake_quantize(rows), rows, self.norm, dim=1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
            lo, hi = lo * best_ratio, hi * best_ratio
        p = params_from_range(lo, hi, bits, self.symmetric)
        shape = (-1,) + (1,) * (ndim - 1)
        return UniformParams(p.scale.reshape(shape), p.zero_point.reshape(shape), bits, self.symmetric)

    def _ratios(self, device: torch.device) -> torch.Tensor:
        return torch.linspace(1.0, self.min_ratio, self.grid, dtype=torch.float32, device=device)
