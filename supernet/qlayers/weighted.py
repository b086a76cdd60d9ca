"""Quantized ``nn.Conv2d`` and ``nn.Linear``: the FP parameters are shared, not copied.

A layer holds one :class:`~supernet.quant.qtensor.QuantizedTensor` per weight bit-width (``slots``) and an
activation quantizer for its input. :meth:`QuantWeightLayer.activate` materialises the selected width's weight
from its codes (only when it changes; one float copy per layer); at 16/32 bits
the forward pass is exactly the wrapped layer's. The activation scale is folded into the (smaller) weight:
``conv(q · s, ŵ) = conv(q, s · ŵ)`` with the same integer codes ``q``.

A linear site whose output depends on the timestep only (a ResBlock's time-embedding projection) may also hold a
:class:`~supernet.qlayers.temporal.TemporalTable` per activation width (``temporal``, filled by the calibration's
``temporal_cache`` switch): while the selected activation width has one, the forward pass returns the table's row
for the current timestep instead of computing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from supernet.errors import CalibrationError
from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.temporal import TemporalTable
from supernet.quant.protocol import is_fp
from supernet.quant.qtensor import QuantizedTensor


class QuantWeightLayer(nn.Module):
    """Mixin state and behaviour of a quantized layer with a weight (one site)."""

    kind: ClassVar[str] = ""
    site: str
    act: ActQuantizer
    slots: dict[int, QuantizedTensor]
    temporal: dict[int, TemporalTable]
    w_bits: int
    _w: torch.Tensor | None
    _w_slot: QuantizedTensor | None
    _kernel: Callable[[torch.Tensor], torch.Tensor | None] | None
    _table: TemporalTable | None
    _ctx: TimestepContext

    def _init_site(self, site: str, ctx: TimestepContext) -> None:
        self.site = site
        self.act = ActQuantizer(site, "x", "a", ctx)
        self.slots = {}
        self.temporal = {}
        self.w_bits = 32
        self._w = None
        self._w_slot = None
        self._kernel = None
        self._table = None
        self._ctx = ctx

    @property
    def name(self) -> str:
        return self.site

    @property
    def a_bits(self) -> int:
        return self.act.bits

    def act_quantizers(self) -> tuple[ActQuantizer, ...]:
        return (self.act,)

    @property
    def cached(self) -> bool:
        """True while the forward pass reads the temporal table of the selected activation width."""
        return self._table is not None

    def activate(self, w_bits: int, a_bits: int) -> None:
        """Select the stored weight for ``w_bits``, the activation parameters for ``a_bits`` and, if calibrated
        for ``a_bits``, the cached temporal features.

        The weight of ``w_bits`` is materialised from its codes (in the FP weight's dtype, on its device) unless it
        already is; the previously assembled one is dropped, so one float copy per site is resident at most.
        """
        slot: QuantizedTensor | None = None
        if not is_fp(w_bits):
            slot = self.slots.get(w_bits)
            if slot is None:
                raise CalibrationError(f"{self.site}: no weights quantized to {w_bits} bits")
        self.act.activate(a_bits)
        if slot is None:
            self._w = None
        elif slot is not self._w_slot or self._w is None:
            self._w = None  # free the old copy before making the new one
            self._w = slot.dequantize(self.weight)
        self._w_slot, self.w_bits = slot, w_bits
        self._table = None if is_fp(a_bits) else self.temporal.get(a_bits)

    def use_kernel(self, kernel: Callable[[torch.Tensor], torch.Tensor | None] | None) -> None:
        """A run-time backend's computation of this site (:mod:`supernet.runtime`): called with the input first;
        its ``None`` means compute as usual. ``None`` removes it."""
        self._kernel = kernel

    def adopt_parameter(self) -> None:
        """The FP parameter already holds the selected slot's dequantized weights (an export's, rebuilt from these
        codes): compute with it instead of a second float copy. A later :meth:`activate` materialises again."""
        self._w = None

    def drop_weights(self) -> None:
        """A run-time kernel (:meth:`use_kernel`) computes this site from its own packed weights: free the float
        weights and the codes. The parameter becomes an empty tensor of its dtype and device (so a model's
        ``dtype`` still reads); the site cannot select another width or compute without the kernel afterwards."""
        self._w = self._w_slot = None
        self.slots = {}
        self.weight = nn.Parameter(self.weight.detach().new_empty(0), requires_grad=False)

    def use_weight(self, w: torch.Tensor | None) -> None:
        """Calibration only: compute with ``w`` (cast to the FP weight's dtype and device; differentiable) instead
        of the assembled slot, ``None`` for the FP weight, until the next :meth:`activate`."""
        self._w = None if w is None else w.to(device=self.weight.device, dtype=self.weight.dtype)
        self._w_slot = None

    def follow(self, device: str | torch.device | None = None) -> None:
        """After the layer's parameters were moved or cast: move the codes and cached features to ``device`` (if
        given) and materialise the assembled weight again, in the parameters' new dtype and place."""
        if device is not None:
            self.slots = {b: qt.to(device) for b, qt in self.slots.items()}
            self.temporal = {b: table.to(device) for b, table in self.temporal.items()}
        self.use_weight(None)
        self.activate(self.w_bits, self.a_bits)

    def _operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.act.split(x)
        w = self.weight if self._w is None else self._w
        return q, (w if s is None else w * s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, site={self.site!r}, w_bits={self.w_bits}, a_bits={self.a_bits}"


class QConv2d(QuantWeightLayer, nn.Conv2d):
    """Quantized ``nn.Conv2d`` (weights per output channel, input per tensor)."""

    kind: ClassVar[str] = "conv2d"

    @classmethod
    def wrap(cls, conv: nn.Conv2d, site: str, ctx: TimestepContext) -> QConv2d:
        """A wrapper sharing ``conv``'s parameters."""
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        q.weight, q.bias = conv.weight, conv.bias
        q.train(conv.training)
        q._init_site(site, ctx)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is not None:
            out = self._kernel(x)
            if out is not None:
                return out
        q, w = self._operands(x)
        return self._conv_forward(q, w, self.bias)


class QLinear(QuantWeightLayer, nn.Linear):
    """Quantized ``nn.Linear`` (weights per output feature, input per tensor)."""

    kind: ClassVar[str] = "linear"

    @classmethod
    def wrap(cls, linear: nn.Linear, site: str, ctx: TimestepContext) -> QLinear:
        """A wrapper sharing ``linear``'s parameters."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        q.train(linear.training)
        q._init_site(site, ctx)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self._table
        if table is not None:
            return table.lookup(self._ctx.timestep, x.shape[:-1], self.weight)
        if self._kernel is not None:
            out = self._kernel(x)
            if out is not None:
                return out
        q, w = self._operands(x)
        return F.linear(q, w, self.bias)
