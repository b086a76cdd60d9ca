"""A tensor stored as integer codes plus quantization parameters; its float value is made on demand.

A supernet keeps one of these per (site, bit-width): only the codes and the per-channel parameters stay resident,
and a layer materialises the float weight of the width it is assembled at (:meth:`QuantizedTensor.dequantize`), in
the model's dtype and on its device. Codes of at most four bits are packed two to a byte (low nibble first), with
torch operations that run wherever the codes are; wider codes take one byte each.
"""

from __future__ import annotations

import math

import torch

from supernet.quant.uniform import UniformParams

#: Widths stored two codes to a byte.
NIBBLE_BITS = 4


def pack_nibbles(codes: torch.Tensor, qmin: int) -> torch.Tensor:
    """Codes (offsets from ``qmin`` in ``[0, 16)``) two to a byte, flat: code ``2i`` in the low nibble of byte ``i``."""
    flat = (codes.reshape(-1).to(torch.int16) - qmin).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor, qmin: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: ``numel`` flat codes of ``dtype``."""
    both = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel]
    return (both.to(torch.int16) + qmin).to(dtype)


class QuantizedTensor:
    """Integer ``codes`` (int8 or uint8) and the :class:`UniformParams` that map them back to floats.

    The float value is computed from the codes in float32 every time (deterministic), so a tensor rebuilt from
    stored codes and parameters dequantizes bit-identically to the original. ``codes`` unpacks packed storage.
    """

    __slots__ = ("_packed", "_stored", "params", "shape")

    def __init__(self, codes: torch.Tensor, params: UniformParams) -> None:
        if codes.dtype != params.code_dtype:
            raise ValueError(f"codes are {codes.dtype}, parameters expect {params.code_dtype}")
        self.params = params
        self.shape = tuple(codes.shape)
        self._packed = params.bits <= NIBBLE_BITS
        self._stored = pack_nibbles(codes, params.qrange[0]) if self._packed else codes

    @classmethod
    def from_float(cls, x: torch.Tensor, params: UniformParams) -> QuantizedTensor:
        """Quantize ``x`` with ``params``."""
        return cls(params.quantize(x.detach()), params)

    @property
    def bits(self) -> int:
        return self.params.bits

    @property
    def device(self) -> torch.device:
        return self._stored.device

    @property
    def codes(self) -> torch.Tensor:
        """The integer codes (a fresh tensor when stored packed)."""
        if not self._packed:
            return self._stored
        numel = math.prod(self.shape)
        flat = unpack_nibbles(self._stored, self.params.qrange[0], numel, self.params.code_dtype)
        return flat.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Resident bytes: the stored codes and the parameters."""
        p = self.params
        return sum(t.numel() * t.element_size() for t in (self._stored, p.scale, p.zero_point))

    def dequantize(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The float value: float32 on the codes' device, or in ``like``'s dtype on ``like``'s device (computed in
        float32 and cast, so every dtype gets the same rounded codes)."""
        p = self.params
        if self._packed:  # straight from the nibbles: (offset - (z - qmin)) · s, the same small integers times s
            stored = self._stored
            dev = stored.device
            both = torch.empty(stored.numel() * 2, dtype=torch.float32, device=dev)
            both[0::2] = stored & 0x0F
            both[1::2] = stored >> 4
            value = both[: math.prod(self.shape)].view(self.shape)
            value = value.sub_(p.zero_point.to(dev) - p.qrange[0]).mul_(p.scale.to(dev))
        else:
            value = p.dequantize(self._stored)
        return value if like is None else value.to(device=like.device, dtype=like.dtype)

    def to(self, device: str | torch.device) -> QuantizedTensor:
        """This tensor (codes and parameters) on ``device``."""
        p = self.params
        params = UniformParams(p.scale.to(device), p.zero_point.to(device), p.bits, p.symmetric)
        return QuantizedTensor(self.codes.to(device), params)

    def __repr__(self) -> str:
        return f"QuantizedTensor(bits={self.bits}, shape={self.shape}, packed={self._packed})"
