"""MAC and parameter counts per site from one traced forward at batch 1 → :class:`search.cost.CostModel`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from search.cost import CostModel
from supernet.models.base import DiffusionAdapter
from supernet.qlayers.attention import QMatMul
from supernet.qlayers.registry import Site
from supernet.qlayers.weighted import QConv2d, QLinear, QuantWeightLayer


def layer_macs(layer: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv/linear call that produced ``output`` (all samples in it)."""
    if isinstance(layer, QConv2d):
        kh, kw = layer.kernel_size
        return int(output.numel() * (layer.in_channels // layer.groups) * kh * kw)
    if isinstance(layer, QLinear):
        return int(output.numel() * layer.in_features)
    raise TypeError(f"no MAC formula for {type(layer).__name__}")


def _matmul_pre_hook(site: QMatMul, macs: dict[str, int]) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        macs[site.name] += site.macs_per_sample(hidden, enc)

    return hook


def trace_costs(model: DiffusionAdapter, sites: Mapping[str, Site], timestep: int = 0) -> CostModel:
    """Run the model once (:meth:`~supernet.models.base.DiffusionAdapter.predict_noise`) on a zero sample of its
    ``sample_shape`` (batch 1, with its ``example_condition``) and count MACs per site.

    Every site must be in floating point (the trace follows the FP path). Weight parameters are counted per
    site; every other parameter of the denoiser (biases, norms, layers left in FP) goes to ``fp_params`` (32
    bits).
    """
    macs = dict.fromkeys(sites, 0)
    handles = []
    for name, site in sites.items():
        if isinstance(site, QuantWeightLayer):
            handles.append(
                site.register_forward_hook(
                    lambda mod, _inp, out, _n=name: macs.__setitem__(_n, macs[_n] + layer_macs(mod, out))
                )
            )
        elif isinstance(site, QMatMul):
            handles.append(site.owner.register_forward_pre_hook(_matmul_pre_hook(site, macs), with_kwargs=True))
        else:
            raise TypeError(f"no MAC formula for site {name} of kind {site.kind}")
    try:
        x = torch.zeros((1, *model.sample_shape), dtype=torch.float32, device=model.device)
        with torch.no_grad():
            model.predict_noise(x, timestep, model.example_condition(1))
    finally:
        for h in handles:
            h.remove()
    params = {name: int(s.weight.numel()) for name, s in sites.items() if isinstance(s, QuantWeightLayer)}
    total = sum(p.numel() for p in model.denoiser.parameters())
    return CostModel(macs=macs, params=params, fp_params=int(total - sum(params.values())))
