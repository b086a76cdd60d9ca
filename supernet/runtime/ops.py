"""oneDNN's int8 convolution and linear kernels, and the quantized attention, as opaque custom operators
(``torch.ops.tmpq.*``).

Inductor lowers ``torch.ops.onednn.qconv2d_pointwise`` itself only when the packed weight is a frozen constant of
the graph; an export's packed weights are plain tensors held by the sites' kernels. Wrapped as custom operators
with shape functions, they stay single extern calls in a compiled graph while the elementwise work around them
(normalisation, activation, the input's rounding to codes) fuses.

Both take the input as unsigned 8-bit codes with a per-tensor scale and zero-point (0-d tensors, so a compiled graph
does not specialise on a timestep's values) and return float32, bias included.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch.library import custom_op

#: The attention computations ``tmpq::quant_attention`` runs, by handle (an operator takes no Python objects).
_ATTENTION: dict[int, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]] = {}
_HANDLES = itertools.count()


def register_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]) -> int:
    """A handle under which ``tmpq::quant_attention`` calls ``fn(query, key, value, scale)``."""
    handle = next(_HANDLES)
    _ATTENTION[handle] = fn
    return handle


@custom_op("tmpq::int8_conv2d", mutates_args=())
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
    out = torch.ops.onednn.qconv2d_pointwise(
        codes, float(scale), int(zero_point), packed, w_scale, w_zero, bias,
        stride, padding, dilation, groups, 1.0, 0, torch.float32, "none", [], "",
    )  # fmt: skip
    return out.contiguous(memory_format=torch.channels_last)  # what the shape function promises (a no-op)


@int8_conv2d.register_fake
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


@custom_op("tmpq::int8_linear", mutates_args=())
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
    return torch.ops.onednn.qlinear_pointwise(
        codes, float(scale), int(zero_point), packed, w_scale, w_zero, bias, 1.0, 0, torch.float32, "none", [], ""
    )


@int8_linear.register_fake
def _int8_linear_shape(codes: torch.Tensor, *args: Any) -> torch.Tensor:
    w_scale = args[3]
    return codes.new_empty((codes.shape[0], w_scale.numel()), dtype=torch.float32)


@custom_op("tmpq::quant_attention", mutates_args=())
def quant_attention(
    handle: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    """A quantized attention (``(batch·heads, tokens, head_dim)`` operands) computed by the function registered
    under ``handle`` (:func:`register_attention`), which reads the current timestep's parameters itself."""
    return _ATTENTION[handle](query, key, value, scale)


@quant_attention.register_fake
def _quant_attention_shape(
    handle: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    return query.new_empty((query.shape[0], query.shape[1], value.shape[2]))
