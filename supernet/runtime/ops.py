"""oneDNN's int8 convolution and linear kernels, and the quantized attention, as opaque operators
(``torch.ops.tmpq.*``).

Inductor lowers ``torch.ops.onednn.qconv2d_pointwise`` itself only when the packed weight is a frozen constant of
the graph and the input's scale a Python float; an export's packed weights are plain tensors held by the sites'
kernels and its scales change with the timestep. Defined as operators with shape functions, the kernels stay single
extern calls in a compiled graph while the elementwise work around them (normalisation, activation, the input's
rounding to codes) fuses.

The operators are defined through ``torch.library.Library`` rather than ``torch.library.custom_op``: the latter's
Python wrapper cost about 0.1 ms a call (measured: 0.93 against 0.82 ms for a batch-64 convolution at 16 x 16 on an
AMX CPU, where the kernel itself is 15x faster than float32), and a step of the testbed makes 68 such calls.

The kernels take the input as unsigned 8-bit codes with a per-tensor scale and zero-point (0-d tensors, so a
compiled graph does not specialise on a timestep's values) and return float32, bias included.

The quantized attention names the computation it runs by a handle that is a 0-d tensor too: an integer argument
would be a constant of the graph, so two exports of the same architecture would compile two graphs that differ in
it alone, and Inductor's graph cache, which serves a graph compiled before in this process or an earlier one, would
never serve the second (measured: a second identical export's first step took 74 s to compile, 6 s from the cache).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.library import Library, register_fake

#: The attention computations ``tmpq::quant_attention`` runs, by handle (an operator takes no Python objects); weak,
#: so that a dropped export's computations and their parameters go with it.
_ATTENTION: dict[int, weakref.WeakMethod] = {}
_HANDLES = itertools.count()

_LIB = Library("tmpq", "DEF")  # module-level: the definitions live as long as this object
_LIB.define(
    "int8_conv2d(Tensor codes, Tensor scale, Tensor zero_point, Tensor packed, Tensor w_scale, Tensor w_zero, "
    "Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, int[] kernel_size) -> Tensor"
)
_LIB.define(
    "int8_linear(Tensor codes, Tensor scale, Tensor zero_point, Tensor packed, Tensor w_scale, Tensor w_zero, "
    "Tensor? bias) -> Tensor"
)
_LIB.define("quant_attention(Tensor handle, Tensor query, Tensor key, Tensor value, float scale) -> Tensor")


def register_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    """A handle (a 0-d int64 tensor) under which ``tmpq::quant_attention`` calls the bound method
    ``fn(query, key, value, scale)`` for as long as its object lives."""
    handle = next(_HANDLES)
    _ATTENTION[handle] = weakref.WeakMethod(fn, lambda _ref: _ATTENTION.pop(handle, None))  # type: ignore[arg-type]
    return torch.tensor(handle, dtype=torch.int64)


def int8_conv2d(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    kernel_size: list[int],
) -> torch.Tensor:
    """A 2-d convolution of uint8 ``codes`` (``scale · (codes - zero_point)``) with prepacked int8 weights."""
    out = torch.ops.onednn.qconv2d_pointwise.tensor(
        codes, scale, zero_point, packed, w_scale, w_zero, bias,
        stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    return out.contiguous(memory_format=torch.channels_last)  # what the shape function promises (a no-op)


def _int8_conv2d_shape(codes: torch.Tensor, *args: Any) -> torch.Tensor:
    w_scale, stride, padding, dilation, kernel_size = args[3], args[6], args[7], args[8], args[10]
    n, _, h, w = codes.shape
    out = [
        (size + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
        for i, size in enumerate((h, w))
    ]
    # oneDNN writes its output channels-last
    empty = codes.new_empty((n, w_scale.numel(), *out), dtype=torch.float32)
    return empty.contiguous(memory_format=torch.channels_last)


def int8_linear(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    packed: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """A linear layer on 2-d uint8 ``codes`` with prepacked int8 weights."""
    return torch.ops.onednn.qlinear_pointwise.tensor(
        codes, scale, zero_point, packed, w_scale, w_zero, bias, 1.0, 0, torch.float32, "none", [], ""
    )


def _int8_linear_shape(codes: torch.Tensor, *args: Any) -> torch.Tensor:
    w_scale = args[3]
    return codes.new_empty((codes.shape[0], w_scale.numel()), dtype=torch.float32)


def quant_attention(
    handle: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    """A quantized attention (``(batch·heads, tokens, head_dim)`` operands) computed by the function registered
    under ``handle`` (:func:`register_attention`), which reads the current timestep's parameters itself."""
    ref = _ATTENTION.get(int(handle))
    fn = ref() if ref is not None else None
    if fn is None:
        raise RuntimeError(f"tmpq::quant_attention: handle {int(handle)} names no live attention")
    return fn(query, key, value, scale)


def _quant_attention_shape(
    handle: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    return query.new_empty((query.shape[0], query.shape[1], value.shape[2]))


for _name, _impl, _shape in (
    ("int8_conv2d", int8_conv2d, _int8_conv2d_shape),
    ("int8_linear", int8_linear, _int8_linear_shape),
    ("quant_attention", quant_attention, _quant_attention_shape),
):
    # no autograd: these operators only ever run under no_grad, at inference
    _LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    register_fake(f"tmpq::{_name}", _shape, lib=_LIB)
