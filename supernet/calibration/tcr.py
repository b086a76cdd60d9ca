"""TCR (TCAQ-DM's timestep-channel joint reparameterization): per-input-channel factors from activation ranges.

For each weight site, with ``m[t, j] = max |X_t[..., j]|`` the largest input magnitude of channel ``j`` at grid
timestep ``t`` (FP model, calibration inputs):

    s_t = min_j m[t, j],   r[t, j] = m[t, j] / s_t,   r_j = Σ_t r[t, j]·m[t, j] / Σ_t m[t, j],   r_j ∈ [1, r_max]

(the form reported for TCAQ-DM, DESIGN.md §4: timesteps with larger activations weigh more). ``tcr_alpha``
(migration strength, ours) takes ``r_j^α`` before the clamp: the reported form (α = 1) moves all of a channel's
range into the weights; α = 0.5 splits it, as SmoothQuant does. The site's input is
then divided by ``r`` and its weight columns multiplied by it (:mod:`supernet.calibration.reparam`).

Choices where the secondary sources are silent: a channel that is zero at every timestep gets ``r = 1``; ``s_t``
is floored at 1e-8 so a channel that is dead at one timestep does not make every other ratio infinite (the clamp
then caps them at ``r_max``); sites sharing one input (``to_q``/``to_k``/``to_v``) get the factors of that input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from supernet.calibration.data import CalibrationData
from supernet.calibration.reparam import ReparamGroup, channel_dim
from supernet.models.base import DiffusionAdapter
from supernet.qlayers.registry import Site
from supernet.qlayers.weighted import QuantWeightLayer

_FLOOR = 1e-8


def tcr_factors(maxima: torch.Tensor, max_factor: float = 100.0, alpha: float = 1.0) -> torch.Tensor:
    """The pooled factors ``r`` (shape ``(C,)``) of per-timestep channel maxima ``maxima`` (shape ``(T, C)``),
    raised to the migration strength ``alpha`` before the clamp."""
    m = maxima.detach().to(torch.float64).abs()
    s = m.amin(dim=1, keepdim=True).clamp_min(_FLOOR)
    r_t = m / s
    den = m.sum(dim=0)
    r = torch.where(den > 0, (r_t * m).sum(dim=0) / den.clamp_min(_FLOOR), torch.ones_like(den))
    return r.pow(alpha).clamp(1.0, max_factor).to(torch.float32)


def collect_input_maxima(
    model: DiffusionAdapter, layers: Mapping[str, QuantWeightLayer], data: CalibrationData, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """``{site: m}`` with ``m[t, j]`` the largest |input| of channel ``j`` at grid timestep ``t`` (the model as it
    is, normally FP)."""
    out = {
        n: torch.zeros(len(data.timesteps), layer.weight.shape[1], device=layer.weight.device)
        for n, layer in layers.items()
    }
    current: list[int] = [0]

    def hook_for(name: str, dim: int):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            dims = [d for d in range(x.dim()) if d != (dim % x.dim())]
            row = out[name][current[0]]
            torch.maximum(row, x.abs().amax(dim=dims).to(row), out=row)

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n, channel_dim(layer))) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            for i, t, x in data.items():
                current[0] = i
                for chunk, cond in model.batches(x, batch_size):
                    model.predict_noise(chunk, t, cond)
    finally:
        for h in handles:
            h.remove()
    return out


def compute_tcr(
    model: DiffusionAdapter,
    sites: Mapping[str, Site],
    groups: list[ReparamGroup],
    data: CalibrationData,
    max_factor: float,
    alpha: float = 1.0,
) -> dict[str, torch.Tensor]:
    """TCR factors of every weight site of ``groups`` (one vector per group, shared by its sites)."""
    layers = {n: s for n, s in sites.items() if isinstance(s, QuantWeightLayer)}
    firsts = {g.sites[0]: layers[g.sites[0]] for g in groups}
    maxima = collect_input_maxima(model, firsts, data)
    factors: dict[str, torch.Tensor] = {}
    for g in groups:
        r = tcr_factors(maxima[g.sites[0]], max_factor, alpha)
        factors.update({s: r for s in g.sites})
    return factors
