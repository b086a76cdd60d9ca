"""The ``cpu-int8`` backend: an export's convolutions and linear layers on oneDNN's int8 kernels (x86 CPUs).

Each conv/linear site whose weight and input are quantized (at most 8 bits, a uniform per-tensor activation
quantizer) gets an int8 kernel from PyTorch's own quantization operators (``torch.ops.onednn``, the ones the x86
Inductor quantization path lowers to): at every step the input is rounded to unsigned 8-bit codes with the current
timestep's calibrated scale and zero-point (the same codes the reference backend computes), and the convolution runs
on those codes and int8 weights with a float32 output, bias included.

The weights must be symmetric int8 per output channel. Symmetric codes are used as they are; asymmetric codes of at
most 7 bits become ``code - zero_point`` (at most ±127) with the same scale, exactly. Asymmetric 8-bit codes do not
fit and are re-quantized symmetrically from their values (one rounding more; such a site is reported ``requantized``).
Everything else (attention matmuls, sites left in FP, log2-quantized inputs, cached temporal features) runs as the
reference backend does. A site's kernel falls back to the reference computation at a timestep whose activation
parameters are not uniform per-tensor ones.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from supernet.qlayers.weighted import QConv2d, QLinear, QuantWeightLayer
from supernet.quant.protocol import is_fp
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams

log = logging.getLogger(__name__)

CPU_INT8 = "cpu-int8"
_OPS = ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise")


def cpu_int8_unavailable() -> str | None:
    """Why the backend cannot run here (``None``: it can)."""
    missing = [op for op in _OPS if not hasattr(torch.ops.onednn, op)]
    if missing:
        return f"this torch has no oneDNN int8 operators ({', '.join(missing)})"
    if "x86" not in torch.backends.quantized.supported_engines:
        return "this torch build has no x86 quantized engine"
    return None


def _symmetric_int8(slot: QuantizedTensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(int8 weight, per-channel scale, how)`` with ``how`` ``exact`` or ``requantized``."""
    p = slot.params
    out_channels = slot.shape[0]
    scale = p.scale.reshape(-1).expand(out_channels).to(torch.float32).contiguous()
    codes = slot.codes.to(torch.int16)
    if p.symmetric:
        return codes.to(torch.int8), scale, "exact"
    zero = p.zero_point.reshape(-1, *([1] * (codes.dim() - 1))).to(torch.int16)
    centred = codes - zero
    if p.bits <= 7:
        return centred.to(torch.int8), scale, "exact"
    values = centred.to(torch.float32) * scale.view(-1, *([1] * (codes.dim() - 1)))
    new_scale = (values.abs().amax(dim=tuple(range(1, values.dim()))) / 127).clamp_min(1e-12)
    q = torch.round(values / new_scale.view(-1, *([1] * (codes.dim() - 1)))).clamp(-127, 127)
    return q.to(torch.int8), new_scale.contiguous(), "requantized"


class _Int8Kernel:
    """The int8 computation of one site (called by the layer's forward; ``None`` means: compute as reference)."""

    def __init__(self, layer: QuantWeightLayer, slot: QuantizedTensor) -> None:
        self.layer = layer
        weight, self.w_scale, self.how = _symmetric_int8(slot)
        self.w_zero = torch.zeros(self.w_scale.numel(), dtype=torch.long)
        self.bias = None if layer.bias is None else layer.bias.detach().to(torch.float32)
        if isinstance(layer, QConv2d):
            self.conv = (list(layer.stride), list(layer.padding), list(layer.dilation), int(layer.groups))
            stride, padding, dilation, groups = self.conv
            self.packed = torch.ops.onednn.qconv_prepack(
                weight, self.w_scale, 1.0, 0, stride, padding, dilation, groups
            )
        else:
            self.conv = None
            self.packed = torch.ops.onednn.qlinear_prepack(weight, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        p = self.layer.act.params()
        if not isinstance(p, UniformParams) or p._floats is None or x.dtype != torch.float32:
            return None
        inv, lo, hi, s, z = p._floats
        offset = 128.0 if p.symmetric else 0.0  # signed codes shifted into uint8, the zero-point with them
        zero = int(z + offset)
        q = torch.mul(x, inv).round_().clamp_(lo, hi).add_(z + offset).to(torch.uint8)
        if self.conv is not None:
            stride, padding, dilation, groups = self.conv
            return torch.ops.onednn.qconv2d_pointwise(
                q.contiguous(), s, zero, self.packed, self.w_scale, self.w_zero, self.bias,
                stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip
        flat = q.reshape(-1, q.shape[-1]).contiguous()
        out = torch.ops.onednn.qlinear_pointwise(
            flat, s, zero, self.packed, self.w_scale, self.w_zero, self.bias, 1.0, 0, torch.float32, "none", [], ""
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _why_not(layer: QuantWeightLayer) -> str | None:
    if is_fp(layer.w_bits) or is_fp(layer.a_bits):
        return "FP weights or inputs"
    if layer.w_bits > 8 or layer.a_bits > 8:
        return "wider than 8 bits"
    if isinstance(layer, QConv2d) and layer.padding_mode != "zeros":
        return f"padding mode {layer.padding_mode}"
    if isinstance(layer, QLinear) and layer.cached:
        return "cached temporal features (a table lookup)"
    table = layer.act.tables.get(layer.a_bits, ())
    if not all(isinstance(p, UniformParams) and p._floats is not None for p in table):
        return "activation parameters that are not uniform per tensor"
    if layer.weight.device.type != "cpu":
        return "not on the CPU"
    return None


def install_cpu_int8(denoiser: nn.Module) -> dict[str, str]:
    """Give every eligible site of an export's ``denoiser`` (already assembled) an int8 kernel; returns, per
    conv/linear site, ``int8`` (exact codes), ``int8-requantized`` (8-bit asymmetric weights re-quantized) or the
    reason it stays on the reference computation. Raises RuntimeError where the backend cannot run."""
    reason = cpu_int8_unavailable()
    if reason is not None:
        raise RuntimeError(f"{CPU_INT8}: {reason}")
    report: dict[str, str] = {}
    for layer in denoiser.modules():
        if not isinstance(layer, QConv2d | QLinear):
            continue
        why = _why_not(layer)
        slot = layer.slots.get(layer.w_bits) if why is None else None
        if why is None and slot is None:
            why = "no weight codes"
        if why is not None:
            report[layer.site] = f"reference: {why}"
            continue
        assert slot is not None
        kernel = _Int8Kernel(layer, slot)
        layer.use_kernel(kernel)
        report[layer.site] = "int8" if kernel.how == "exact" else "int8-requantized"
    counts = {k: sum(v == k for v in report.values()) for k in ("int8", "int8-requantized")}
    log.info("%s: %s of %d conv/linear sites", CPU_INT8, counts, len(report))
    return report


def kernel_of(layer: Any) -> Any:
    """The int8 kernel installed on ``layer`` (``None``: it computes as the reference backend)."""
    return getattr(layer, "_kernel", None)
