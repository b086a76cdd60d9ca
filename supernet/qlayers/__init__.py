"""Quantized layers: conv/linear wrappers, attention matmul sites, the timestep context and the registry."""

from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.attention import QMatMul, QuantAttnProcessor
from supernet.qlayers.context import TimestepContext, timestep_of
from supernet.qlayers.registry import Installation, Installed, Site, install_sites, register, registered_types
from supernet.qlayers.weighted import QConv2d, QLinear, QuantWeightLayer

__all__ = [
    "ActQuantizer",
    "Installation",
    "Installed",
    "QConv2d",
    "QLinear",
    "QMatMul",
    "QuantAttnProcessor",
    "QuantWeightLayer",
    "Site",
    "TimestepContext",
    "install_sites",
    "register",
    "registered_types",
    "timestep_of",
]
