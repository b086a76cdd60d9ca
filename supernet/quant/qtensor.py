"""A tensor stored as integer codes plus quantization parameters, with its dequantized value cached once."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from supernet.quant.uniform import UniformParams


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """Integer ``codes`` (int8 or uint8) and the :class:`UniformParams` that map them back to floats.

    ``dequantized`` is computed from the codes at construction, so a tensor rebuilt from stored codes and
    parameters is bit-identical to the original.
    """

    codes: torch.Tensor
    params: UniformParams
    dequantized: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.codes.dtype != self.params.code_dtype:
            raise ValueError(f"codes are {self.codes.dtype}, parameters expect {self.params.code_dtype}")
        object.__setattr__(self, "dequantized", self.params.dequantize(self.codes))

    @classmethod
    def from_float(cls, x: torch.Tensor, params: UniformParams) -> QuantizedTensor:
        """Quantize ``x`` with ``params``."""
        return cls(params.quantize(x.detach()), params)

    @property
    def bits(self) -> int:
        return self.params.bits
