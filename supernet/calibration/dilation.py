"""DilateQuant's weight dilation: per input channel the largest ``s_j ≥ 1`` that keeps every output channel's
weights inside that output channel's existing [min, max].

Applied as ``(X/s)·(W·diag(s))`` through :mod:`supernet.calibration.reparam`: the activation range shrinks while
the per-output-channel weight quantizer ranges stay as they were. For a weight ``W[i, j, …]`` (output ``i``,
input ``j``, any kernel positions): ``s_j = min_i min_k bound(W[i, j, k])`` with ``bound(w) = max_i / w`` for
``w > 0``, ``min_i / w`` for ``w < 0`` and no bound for ``w = 0``. Sites sharing one input take the smallest
factor of the group (so every member's ranges hold). Factors are capped at ``max_factor`` (a column of zeros is
otherwise unbounded). DilateQuant is a QAT method; only its dilation is used here, as a PTQ reparameterization.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from supernet.calibration.reparam import ReparamGroup
from supernet.qlayers.registry import Site
from supernet.qlayers.weighted import QuantWeightLayer


def dilation_factors(weight: torch.Tensor, max_factor: float = 100.0) -> torch.Tensor:
    """``s`` (shape ``(in_channels,)``) of one weight ``(out, in, ...)``."""
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], weight.shape[1], -1)
    hi = w.amax(dim=(1, 2), keepdim=True).clamp_min(0.0)
    lo = w.amin(dim=(1, 2), keepdim=True).clamp_max(0.0)
    inf = torch.full_like(w, float("inf"))
    bound = torch.where(w > 0, hi / w.where(w > 0, 1.0), torch.where(w < 0, lo / w.where(w < 0, -1.0), inf))
    s = bound.amin(dim=(0, 2))
    return s.clamp(1.0, max_factor).to(torch.float32)


def compute_dilation(
    sites: Mapping[str, Site], groups: list[ReparamGroup], prior: Mapping[str, torch.Tensor], max_factor: float = 100.0
) -> dict[str, torch.Tensor]:
    """Dilation factors of every weight site of ``groups``, computed on ``W·diag(prior)`` (e.g. after TCR);
    returns the combined factors ``prior · s``."""
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        per_site = []
        for name in g.sites:
            layer = sites[name]
            assert isinstance(layer, QuantWeightLayer)
            w = layer.weight.detach()
            p = prior.get(name)
            if p is not None:
                w = w * p.to(w).view(1, -1, *([1] * (w.dim() - 2)))
            per_site.append(dilation_factors(w, max_factor))
        s = torch.stack(per_site).amin(dim=0)
        for name in g.sites:
            p = prior.get(name)
            out[name] = s if p is None else (p * s)
    return out
