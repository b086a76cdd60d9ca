"""Post-softmax quantization fused with the softmax: one pass over an attention chunk's scores.

The reference backend fake-quantizes attention probabilities with a chain of elementwise operators (ten passes for
the log2 quantizer). Here the softmax and the quantizer are one compiled kernel per chunk, with the quantizer's
parameters as 0-d tensors (no recompilation per timestep). The log2 code ``round(-log2(y))`` is read off the
float's bits instead of a logarithm: for ``y = m · 2^e`` with ``m`` in [1, 2), ``-log2(y)`` rounds to ``-e - 1``
when ``m >= √2`` and to ``-e`` otherwise, and ``2^-code`` is built from its exponent bits. The codes equal the
logarithm's except where the float logarithm itself rounds the other way at ``m = √2`` exactly, and below 2^-126
(denormals, which count as zero here).
"""

from __future__ import annotations

import torch

#: The mantissa bits of √2 in float32: mantissas from here up round ``-log2`` down by one more.
_SQRT2_MANTISSA = 0x3504F3
_MANTISSA = 0x7FFFFF


def _softmax_log2(scores: torch.Tensor, scale: torch.Tensor, zero_code: torch.Tensor) -> torch.Tensor:
    y = scores.softmax(dim=-1) / scale
    bits = y.view(torch.int32)
    exponent = (bits >> 23) - 127
    code = torch.clamp(-(exponent + ((bits & _MANTISSA) >= _SQRT2_MANTISSA).to(torch.int32)), min=0)
    value = ((127 - torch.clamp(code, max=126)) << 23).view(torch.float32) * scale
    return torch.where((code > zero_code - 1) | (y <= 0), 0.0, value)


def _softmax_uniform(
    scores: torch.Tensor, inv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    return torch.clamp(torch.round(scores.softmax(dim=-1) * inv), lo, hi) * scale


#: ``softmax`` then log2 fake quantization (scale ``s``, zero code ``2^b - 1``), as values.
softmax_log2 = torch.compile(_softmax_log2)
#: ``softmax`` then uniform fake quantization (``inv = 1/s``, code range ``[lo, hi]`` around the zero-point).
softmax_uniform = torch.compile(_softmax_uniform)
