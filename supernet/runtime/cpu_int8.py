"""The ``cpu-int8`` backend: an export's convolutions and linear layers on oneDNN's int8 kernels (x86 CPUs).

Each conv/linear site whose weight and input are quantized (at most 8 bits, a uniform per-tensor activation
quantizer) gets an int8 kernel from PyTorch's own quantization operators (``torch.ops.onednn``, the ones the x86
Inductor quantization path lowers to): at every step the input is rounded to unsigned 8-bit codes with the current
timestep's calibrated scale and zero-point (the same codes the reference backend computes), and the convolution runs
on those codes and int8 weights with a float32 output, bias included.

The weights must be symmetric int8 per output channel. Symmetric codes are used as they are; asymmetric codes of at
most 7 bits become ``code - zero_point`` (at most ±127) with the same scale, exactly. Asymmetric 8-bit codes do not
fit: they run as ``code - 128`` and the rest, ``scale · (128 - zero_point)`` per output channel, is added as that
constant times the sum of the dequantized input over each output's receptive field (a channel sum and a box sum),
exactly. (An extra output channel of ones in the int8 kernel computes the same sums but was measured slower: 65
channels leave oneDNN's fast path.) Only grouped convolutions re-quantize such weights symmetrically (one rounding
more, reported ``requantized``).
Everything else (sites left in FP, log2-quantized inputs, cached temporal features) runs as the reference backend
does. A site runs on the int8 kernel only when every timestep's activation parameters are uniform per-tensor ones;
its float weights and codes are then freed (the kernel holds packed int8 weights), so an installed site has no
reference computation to fall back to: a non-float32 input is a TypeError.

Attention matmuls stay float32 products of the dequantized codes (at the testbeds' head widths of 8-32 an int8
matmul has nothing to gain); their post-softmax quantization is fused with the softmax (:mod:`supernet.runtime.fused`).

``compile=True`` (the default of :func:`install_cpu_int8`) compiles the denoiser's forward with ``torch.compile``
(Inductor, a C++ compiler needed): the int8 kernels are opaque operators (:mod:`supernet.runtime.ops`) and the
elementwise work around them (group norms, activations, the rounding of each input to codes) fuses into a few C++
loops. Every timestep-dependent quantity is read from per-site tables indexed by a 1-element tensor that a forward
pre-hook sets, so one compiled graph serves every timestep; the timestep itself is passed as a tensor for the same
reason. The first call at each batch size compiles (about a minute for the testbed on 2 cores; Inductor caches
compiled code on disk, which makes a later process's compile much shorter).
"""

from __future__ import annotations

import functools
import logging
import shutil
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.qlayers.attention import QuantAttnProcessor
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.weighted import QConv2d, QLinear, QuantWeightLayer
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import is_fp
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams
from supernet.runtime import ops as _ops  # also registers torch.ops.tmpq
from supernet.runtime.fused import softmax_log2, softmax_uniform

log = logging.getLogger(__name__)

CPU_INT8 = "cpu-int8"
_OPS = ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise")


_COMPILERS = ("g++", "c++", "clang++")
#: Without VNNI, oneDNN's x86 int8 kernels add each pair of uint8 x int8 products in int16 (``vpmaddubsw``),
#: saturating: a site is exact there only while ``2 · max |weight code| · max input code`` fits in int16.
INT16_MAX = 32767


@functools.cache
def int8_pairs_saturate() -> bool:
    """Whether this CPU's int8 kernels saturate pairs of products in int16 (a CPU without VNNI), probed once on
    oneDNN's own linear kernel: 64 products of 255 and 127 must sum exactly."""
    weight = torch.ops.onednn.qlinear_prepack(torch.full((1, 64), 127, dtype=torch.int8), None)
    ones, zero = torch.ones(1), torch.zeros(1, dtype=torch.long)
    x = torch.full((1, 64), 255, dtype=torch.uint8)
    out = torch.ops.onednn.qlinear_pointwise(
        x, 1.0, 0, weight, ones, zero, None, 1.0, 0, torch.float32, "none", [], ""
    )  # fmt: skip
    saturates = float(out) != 64 * 127 * 255
    if saturates:
        log.info("%s: this CPU adds int8 products in int16 (no VNNI): wide sites run as the reference", CPU_INT8)
    return saturates


def saturates(w_absmax: int, max_code: int) -> bool:
    """Whether a site whose int8 weights reach ``w_absmax`` and whose uint8 input codes reach ``max_code`` would
    saturate on this CPU's kernels (never on a CPU with VNNI)."""
    return 2 * w_absmax * max_code > INT16_MAX and int8_pairs_saturate()


def max_input_code(table: list[Any] | tuple[Any, ...]) -> int:
    """The largest uint8 input code of a site's per-timestep activation parameters (uniform ones): ``hi - lo``, the
    centred codes shifted by ``-lo`` (see :func:`_code_table`)."""
    best = 0
    for p in table:
        assert isinstance(p, UniformParams) and p._floats is not None
        _, lo, hi, _, _ = p._floats
        best = max(best, round(hi - lo))
    return best


def cpu_int8_unavailable(compile: bool = False) -> str | None:
    """Why the backend cannot run here (``None``: it can); ``compile``: also compiled with Inductor."""
    missing = [op for op in _OPS if not hasattr(torch.ops.onednn, op)]
    if missing:
        return f"this torch has no oneDNN int8 operators ({', '.join(missing)})"
    if "x86" not in torch.backends.quantized.supported_engines:
        return "this torch build has no x86 quantized engine"
    if compile and not any(shutil.which(c) for c in _COMPILERS):
        names = ", ".join(_COMPILERS)
        return f"torch.compile needs a C++ compiler ({names}) on PATH; install one or pass compile=False"
    return None


class StepIndex:
    """The calibration-grid index of the forward pass in progress as a 1-element tensor (compiled graphs index
    their per-timestep tables with it instead of reading a Python int they would specialise on)."""

    def __init__(self, ctx: TimestepContext) -> None:
        self.ctx = ctx
        self.tensor = torch.zeros(1, dtype=torch.long)

    def hook(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """Forward pre-hook (after the context's): record the grid index; pass an int timestep as a tensor."""
        if self.ctx.index is not None:
            self.tensor.fill_(self.ctx.index)
        if "timestep" in kwargs and isinstance(kwargs["timestep"], int):
            kwargs = {**kwargs, "timestep": torch.tensor(kwargs["timestep"])}
        elif len(args) > 1 and isinstance(args[1], int):
            args = (args[0], torch.tensor(args[1]), *args[2:])
        return args, kwargs


def _symmetric_int8(slot: QuantizedTensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, str]:
    """``(int8 weight, per-channel scale, offset, how)`` with ``how`` ``exact`` or ``requantized``; ``offset``
    (per output channel, or None) is what the weights lack: ``w = scale · int8 + offset`` elementwise."""
    p = slot.params
    out_channels = slot.shape[0]
    scale = p.scale.reshape(-1).expand(out_channels).to(torch.float32).contiguous()
    codes = slot.codes.to(torch.int16)
    if p.symmetric:
        return codes.to(torch.int8), scale, None, "exact"
    zero = p.zero_point.reshape(-1, *([1] * (codes.dim() - 1))).to(torch.int16)
    centred = codes - zero
    if p.bits <= 7:
        return centred.to(torch.int8), scale, None, "exact"
    if groups == 1:  # codes - 128 fit int8; the constant 128 - zero_point per channel becomes a separate term
        offset = scale * (128 - p.zero_point.reshape(-1).expand(out_channels).to(torch.float32))
        return (codes - 128).to(torch.int8), scale, offset.contiguous(), "exact"
    values = centred.to(torch.float32) * scale.view(-1, *([1] * (codes.dim() - 1)))
    new_scale = (values.abs().amax(dim=tuple(range(1, values.dim()))) / 127).clamp_min(1e-12)
    q = torch.round(values / new_scale.view(-1, *([1] * (codes.dim() - 1)))).clamp(-127, 127)
    return q.to(torch.int8), new_scale.contiguous(), None, "requantized"


def _code_table(layer: QuantWeightLayer) -> torch.Tensor:
    """Per grid timestep: ``(inv, lo, hi, uint8 zero-point, scale)`` as float32 rows. The kernel's input codes are
    the centred codes shifted by ``-lo`` into ``[0, hi - lo]`` (the narrowest uint8 range: on a CPU without VNNI the
    largest code bounds what saturates), so its zero-point is ``-lo``."""
    rows = []
    for p in layer.act.tables[layer.a_bits]:
        assert isinstance(p, UniformParams) and p._floats is not None
        inv, lo, hi, s, _ = p._floats
        rows.append([inv, lo, hi, -lo, s])
    return torch.tensor(rows, dtype=torch.float32)


def saturating_widths(layer: QuantWeightLayer) -> list[tuple[int, int]]:
    """The ``(w_bits, a_bits)`` of ``layer``'s calibrated widths (both at most 8) whose int8 products would
    saturate on this CPU, so that the backend runs them as the reference (empty on a CPU with VNNI)."""
    if not int8_pairs_saturate():
        return []
    groups = int(layer.groups) if isinstance(layer, QConv2d) else 1
    inputs = {
        a: max_input_code(table)
        for a, table in layer.act.tables.items()
        if a <= 8 and table and all(isinstance(p, UniformParams) and p._floats is not None for p in table)
    }
    pairs = []
    for w, slot in sorted(layer.slots.items()):
        if w > 8:
            continue
        w_absmax = int(_symmetric_int8(slot, groups)[0].to(torch.int16).abs().max())
        pairs += [(w, a) for a, code in sorted(inputs.items()) if saturates(w_absmax, code)]
    return pairs


class _Int8Kernel:
    """The int8 computation of one site (called by the layer's forward; ``None`` means: compute as reference)."""

    def __init__(self, layer: QuantWeightLayer, slot: QuantizedTensor, step: StepIndex) -> None:
        self.layer = layer
        self.step = step
        self.table = _code_table(layer)
        groups = int(layer.groups) if isinstance(layer, QConv2d) else 1
        weight, self.w_scale, self.offset, self.how = _symmetric_int8(slot, groups)
        self.saturates = saturates(
            int(weight.to(torch.int16).abs().max()), max_input_code(layer.act.tables[layer.a_bits])
        )
        self.w_zero = torch.zeros(self.w_scale.numel(), dtype=torch.long)
        self.bias = None if layer.bias is None else layer.bias.detach().to(torch.float32)
        if isinstance(layer, QConv2d):
            self.conv = (list(layer.stride), list(layer.padding), list(layer.dilation), int(layer.groups))
            self.kernel_size = list(layer.kernel_size)
            self.ones = torch.ones(1, 1, *self.kernel_size)
            stride, padding, dilation, groups = self.conv
            self.packed = torch.ops.onednn.qconv_prepack(
                weight, self.w_scale, 1.0, 0, stride, padding, dilation, groups
            )
        else:
            self.conv = None
            self.packed = torch.ops.onednn.qlinear_prepack(weight, None)

    def use_float(self) -> None:
        """Compute with float products of the same codes (the reference's computation) instead of the int8 kernel,
        whose products would saturate on this CPU; compiled, the timestep's parameters still come from the table,
        so one graph serves every timestep. Eager calls return ``None`` (the layer computes as the reference)."""
        self.packed = None
        self.w_float = self.layer.weight if self.layer._w is None else self.layer._w

    def _float(self, v: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            stride, padding, dilation, groups = self.conv
            return F.conv2d(v, self.w_float, self.bias, stride, padding, dilation, groups)
        return F.linear(v, self.w_float, self.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if torch.compiler.is_compiling():  # the timestep's parameters from tensors: one graph for every timestep
            row = self.table[self.step.tensor][0]
            r = torch.clamp(torch.round(x * row[0]), row[1], row[2])
            if self.packed is None:
                return self._float(r * row[4])
            out = self._int8(r.add(row[3]).to(torch.uint8), row[4], row[3].to(torch.long), x, True)
            return out if self.offset is None else out + self._offset_term(r, row[4])
        p = self.layer.act.params()
        if x.dtype != torch.float32:
            raise TypeError(f"{CPU_INT8}: {self.layer.site} computes float32 inputs, got {x.dtype}")
        if self.packed is None or not isinstance(p, UniformParams) or p._floats is None:
            return None  # float products (use_float); the parameters test never fails on an installed site
        inv, lo, hi, s, _ = p._floats
        r = torch.mul(x, inv).round_().clamp_(lo, hi)  # centred codes; shifted by -lo into uint8 (see _code_table)
        term = None if self.offset is None else self._offset_term(r, s)
        out = self._int8(r.sub_(lo).to(torch.uint8), s, int(-lo), x, False)
        return out if term is None else out.add_(term)

    def _int8(self, q: torch.Tensor, s: Any, zero: Any, x: torch.Tensor, traced: bool) -> torch.Tensor:
        """The int8 kernel on uint8 codes ``q`` (scale ``s``, zero-point ``zero``: 0-d tensors when ``traced``)."""
        if self.conv is not None:
            stride, padding, dilation, groups = self.conv
            if traced:
                return torch.ops.tmpq.int8_conv2d(
                    q, s, zero, self.packed, self.w_scale, self.w_zero, self.bias,
                    stride, padding, dilation, groups, self.kernel_size,
                )  # fmt: skip
            return torch.ops.onednn.qconv2d_pointwise(
                q.contiguous(), s, zero, self.packed, self.w_scale, self.w_zero, self.bias,
                stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip
        flat = q.reshape(-1, q.shape[-1]).contiguous()
        if traced:
            out = torch.ops.tmpq.int8_linear(flat, s, zero, self.packed, self.w_scale, self.w_zero, self.bias)
        else:
            out = torch.ops.onednn.qlinear_pointwise(
                flat, s, zero, self.packed, self.w_scale, self.w_zero, self.bias, 1.0, 0, torch.float32, "none", [], ""
            )
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _offset_term(self, r: torch.Tensor, s: Any) -> torch.Tensor:
        """What 8-bit asymmetric weights add to the int8 kernel's ``codes - 128``: ``scale · (128 - zero_point)``
        per output times the sum of the dequantized input ``s · r`` over the output's receptive field."""
        assert self.offset is not None
        if self.conv is None:
            return r.sum(dim=-1, keepdim=True).mul(s) * self.offset
        stride, padding, dilation, _ = self.conv
        summed = r.sum(dim=1, keepdim=True).mul(s)
        if self.kernel_size == [1, 1] and stride == [1, 1] and padding == [0, 0]:
            window = summed
        elif dilation == [1, 1]:  # a box sum: pooling fuses in a compiled graph, a one-channel convolution does not
            window = F.avg_pool2d(summed, self.kernel_size, stride, padding, divisor_override=1)
        else:
            window = F.conv2d(summed, self.ones, None, stride, padding, dilation)
        return window * self.offset.view(1, -1, 1, 1)


def _fusable(proc: QuantAttnProcessor) -> bool:
    """The probabilities are quantized at every grid timestep, per tensor, uniformly or in log2."""
    q = proc.pv.a
    if is_fp(q.bits):
        return False
    table = q.tables.get(q.bits, ())
    return bool(table) and all(
        isinstance(p, Log2Params) or (isinstance(p, UniformParams) and p._floats is not None) for p in table
    )


class _FusedAttention:
    """The quantized attention of one processor with its softmax and post-softmax quantizer fused per chunk.

    The matmuls run as the reference's, in chunks of heads that stay in cache. In a compiled graph the whole of it
    is one opaque operator (``tmpq::quant_attention``): traced, its chunk loop would unroll, and a graph break
    would split the denoiser into dozens of graphs whose guards cost more than a step at batch 1."""

    def __init__(self, proc: QuantAttnProcessor) -> None:
        self.proc = proc
        self._params: dict[int, tuple[torch.Tensor, ...]] = {}
        self.handle = _ops.register_attention(self._attend)

    def _tensors(self, p: UniformParams | Log2Params) -> tuple[torch.Tensor, ...]:
        key = id(p)
        if key not in self._params:
            if isinstance(p, Log2Params):
                values = [p.scale, float(p.zero_code)]
            else:
                assert p._floats is not None
                inv, lo, hi, s, _ = p._floats
                values = [inv, lo, hi, s]
            self._params[key] = tuple(torch.tensor(v, dtype=torch.float32) for v in values)
        return self._params[key]

    def __call__(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        if mask is not None or query.dtype != torch.float32:
            return None
        if torch.compiler.is_compiling():
            return torch.ops.tmpq.quant_attention(self.handle, query, key, value, float(scale))
        return self._attend(query, key, value, scale)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        p = self.proc.pv.a.params()
        assert isinstance(p, UniformParams | Log2Params)  # _fusable
        fused = softmax_log2 if isinstance(p, Log2Params) else softmax_uniform
        args = self._tensors(p)
        # not in place: an operator's inputs are not its to change
        return self.proc._attend(query, key, value, scale, None, probs=lambda s: fused(s, *args), inplace=False)


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


def _own_code(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A function calling ``forward`` whose code object is this export's alone.

    Dynamo keeps its compiled graphs per code object, and after ``recompile_limit`` (8) of them it silently runs the
    code eagerly: every export's ``UNet2DModel.forward`` shares one code object, so a process's ninth compiled
    export (even with the first eight freed) ran eager, 1.6-2.6x slower (measured). With a code object per export
    the limit counts the batch sizes of one export, and its graphs go when it does. The copy keeps the name, so
    Inductor's on-disk cache still serves every export of the same graph."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    code = call.__code__.replace()  # equal, but a distinct object: dynamo's cache lives on the object
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


def install_cpu_int8(denoiser: nn.Module, *, compile: bool = True) -> dict[str, str]:
    """Give every eligible site of an export's ``denoiser`` (already assembled) an int8 kernel; with ``compile``,
    also fuse each quantized attention's softmax with its post-softmax quantizer and compile the denoiser's forward
    (``compile=False``: no Inductor at all, the int8 kernels called eagerly).

    Returns, per conv/linear site, ``int8`` (exact codes), ``int8-requantized`` (8-bit asymmetric weights
    re-quantized) or the reason it stays on the reference computation, and per attention ``fused-softmax``.
    Raises RuntimeError where the backend cannot run."""
    reason = cpu_int8_unavailable(compile)
    if reason is not None:
        raise RuntimeError(f"{CPU_INT8}: {reason}")
    layers = [m for m in denoiser.modules() if isinstance(m, QuantWeightLayer)]
    if not layers:
        raise RuntimeError(f"{CPU_INT8}: the denoiser has no quantized sites")
    step = StepIndex(layers[0]._ctx)
    report: dict[str, str] = {}
    for module in denoiser.modules() if compile else ():
        proc = getattr(module, "processor", None)
        if isinstance(proc, QuantAttnProcessor):
            fusable = _fusable(proc)
            if fusable:
                proc.use_kernel(_FusedAttention(proc))
            report[proc.qk.name.rsplit(".", 1)[0]] = "fused-softmax" if fusable else "reference: FP probabilities"
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
        kernel = _Int8Kernel(layer, slot, step)
        layer.use_kernel(kernel)
        if kernel.saturates:
            kernel.use_float()
            report[layer.site] = "reference: its int8 products would saturate (a CPU without VNNI)"
            continue
        layer.drop_weights()  # the kernel holds its packed int8 weights; nothing computes with the float ones
        report[layer.site] = "int8" if kernel.how == "exact" else "int8-requantized"
    denoiser.register_forward_pre_hook(step.hook, with_kwargs=True)
    if compile:
        # static shapes: a graph per batch size (measured: dynamic shapes compile 3x longer and run no faster
        # than FP32 here)
        compiled = torch.compile(_own_code(denoiser.forward), dynamic=False)
        denoiser.forward = compiled  # type: ignore[method-assign]
    counts = {k: sum(v == k for v in report.values()) for k in ("int8", "int8-requantized", "fused-softmax")}
    log.info("%s: %s of %d sites (compiled: %s)", CPU_INT8, counts, len(report), compile)
    return report


def kernel_of(layer: Any) -> Any:
    """The kernel installed on ``layer`` (``None``: it computes as the reference backend; a kernel whose
    ``packed`` is ``None`` computes float products of the codes, see ``use_float``)."""
    return getattr(layer, "_kernel", None)
