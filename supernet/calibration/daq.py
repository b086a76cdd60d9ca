"""DAQ (TCAQ-DM's dynamically adaptive quantizer): log2 or uniform for each post-softmax operand and timestep group.

For the attention probabilities of one ``.pv`` site over one group of grid timesteps, a continuous power law
``p(x) = (α-1)/x_min · (x/x_min)^(-α)`` (x ≥ x_min) is fitted by maximum likelihood, ``α̂ = 1 + n / Σ ln(x/x_min)``,
with ``x_min`` chosen among quantiles of the data by the smallest Kolmogorov-Smirnov distance (Clauset, Shalizi &
Newman 2009). It is compared with the alternative, an exponential ``p(x) = λ e^(-λ(x - x_min))`` fitted by maximum
likelihood on the same tail, through the log-likelihood ratio ``R = Σ ln p_pl(x_i) - ln p_exp(x_i)`` (and Vuong's
normalised ``R / (σ √n)`` for its significance). ``R > 0`` (power-law-like) chooses the log2 quantizer, else uniform.

Choices where the sources are silent: the alternative is the exponential (the usual heavy-tail-vs-light-tail
test); ``x_min`` candidates are the 0, 10, …, 50 % quantiles so the tail always keeps at least half the values (a
very narrow tail makes every distribution look like either); the decision uses the FP model's probabilities and
is shared by every bit-width (the distribution is the model's, not the quantizer's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: Quantiles of the data tried as x_min.
XMIN_QUANTILES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
_TINY = 1e-12


@dataclass(frozen=True)
class PowerLawTest:
    """The fit and the decision for one sample.

    Attributes:
        choice: ``"log2"`` (R > 0) or ``"uniform"``.
        R: log-likelihood ratio, power law minus exponential, summed over the tail.
        R_norm: ``R / (σ √n)`` (Vuong); |R_norm| > 2 is significant.
        alpha / xmin: the fitted power law.
        n: values in the tail.
        ks: Kolmogorov-Smirnov distance of the power law on the tail.
    """

    choice: str
    R: float
    R_norm: float
    alpha: float
    xmin: float
    n: int
    ks: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded (NaN, from a sample too small to fit, as ``None``)."""
        return {k: (None if v != v else round(v, 6)) if isinstance(v, float) else v for k, v in asdict(self).items()}


def fit_power_law(x: torch.Tensor, xmin: float) -> tuple[float, torch.Tensor]:
    """``(α̂, per-value log-likelihoods)`` of the continuous power law above ``xmin`` on the values ``x ≥ xmin``."""
    logs = torch.log(x / xmin)
    alpha = 1.0 + x.numel() / max(float(logs.sum()), _TINY)
    ll = math.log(alpha - 1.0) - math.log(xmin) - alpha * logs
    return alpha, ll


def _ks(tail: torch.Tensor, xmin: float, alpha: float) -> float:
    srt = tail.sort().values
    n = srt.numel()
    model = 1.0 - (srt / xmin).pow(1.0 - alpha)
    emp_hi = torch.arange(1, n + 1, dtype=srt.dtype, device=srt.device) / n
    emp_lo = torch.arange(0, n, dtype=srt.dtype, device=srt.device) / n
    return float(torch.maximum((model - emp_hi).abs(), (model - emp_lo).abs()).max())


def power_law_test(values: torch.Tensor, quantiles: Sequence[float] = XMIN_QUANTILES) -> PowerLawTest:
    """Fit a power law to the positive entries of ``values`` and test it against an exponential (on the CPU, in
    float64: a few thousand values, wherever they were observed)."""
    x = values.detach().reshape(-1).to("cpu", torch.float64)
    x = x[x > _TINY]
    if x.numel() < 8:
        return PowerLawTest("uniform", 0.0, 0.0, float("nan"), float("nan"), int(x.numel()), float("nan"))
    best: tuple[float, float, float, torch.Tensor] | None = None
    for q in quantiles:
        xmin = float(torch.quantile(x, q))
        tail = x[x >= xmin]
        if tail.numel() < 8 or float(tail.max()) <= xmin:
            continue
        alpha, _ = fit_power_law(tail, xmin)
        ks = _ks(tail, xmin, alpha)
        if best is None or ks < best[0]:
            best = (ks, xmin, alpha, tail)
    if best is None:
        return PowerLawTest("uniform", 0.0, 0.0, float("nan"), float("nan"), int(x.numel()), float("nan"))
    ks, xmin, alpha, tail = best
    _, ll_pl = fit_power_law(tail, xmin)
    excess = tail - xmin
    lam = 1.0 / max(float(excess.mean()), _TINY)
    ll_exp = math.log(lam) - lam * excess
    diff = ll_pl - ll_exp
    n = diff.numel()
    r = float(diff.sum())
    sigma = float(diff.std()) if n > 1 else 0.0
    r_norm = r / (sigma * math.sqrt(n)) if sigma > 0 else 0.0
    return PowerLawTest("log2" if r > 0 else "uniform", r, r_norm, alpha, xmin, int(n), ks)


def timestep_groups(n_timesteps: int, groups: int) -> list[list[int]]:
    """Grid indices split into ``groups`` contiguous, nearly equal chunks (fewer if the grid is shorter)."""
    k = max(1, min(groups, n_timesteps))
    bounds = [i * n_timesteps // k for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


def subsample(x: torch.Tensor, max_values: int, generator: torch.Generator) -> torch.Tensor:
    """``max_values`` entries of ``x`` drawn uniformly with replacement (all of them, once each, if fewer)."""
    flat = x.detach().reshape(-1)
    if flat.numel() <= max_values:
        return flat.clone()
    return flat[torch.randint(flat.numel(), (max_values,), generator=generator).to(flat.device)]
