"""Quantizers: a common protocol, uniform affine (per channel / per tensor) and log2 (post-softmax)."""

from supernet.quant.log2 import Log2Params, Log2Quantizer
from supernet.quant.protocol import QUANT_BITS, QParams, Quantizer, check_bits, is_fp
from supernet.quant.uniform import UniformParams, UniformQuantizer, code_range, params_from_range

__all__ = [
    "QUANT_BITS",
    "Log2Params",
    "Log2Quantizer",
    "QParams",
    "Quantizer",
    "UniformParams",
    "UniformQuantizer",
    "check_bits",
    "code_range",
    "is_fp",
    "params_from_range",
]
