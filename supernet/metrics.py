"""Quality metrics: FDD (Fréchet distance in a digits classifier's feature space), FP-reference MSE/PSNR, and the
structural ones that catch colour and contrast shifts MSE hides (per-channel SSIM, channel mean/std drift).

FDD needs ~1,000 samples to be stable (see DESIGN.md §6); the FP-reference MSE with fixed noise is the cheap,
low-variance search objective and works for any model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: Images live in [-1, 1]: the data range for PSNR is 2.
DATA_RANGE = 2.0


def mse(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared error between two image batches of the same shape."""
    if images.shape != reference.shape:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(reference.shape)}")
    return float(torch.mean((images.double() - reference.double()) ** 2))


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (``inf`` when identical)."""
    err = mse(images, reference)
    return math.inf if err == 0.0 else 10.0 * math.log10(DATA_RANGE**2 / err)


#: SSIM's stabilising constants for data range 2 (Wang et al. 2004: K1 = 0.01, K2 = 0.03).
_SSIM_C1 = (0.01 * DATA_RANGE) ** 2
_SSIM_C2 = (0.03 * DATA_RANGE) ** 2


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean structural similarity (SSIM) of two batches ``(N, C, H, W)`` in [-1, 1], per channel then averaged.

    Computed per channel (a colour shift lowers it even when the luminance matches) with a Gaussian window of
    sigma 1.5 and width 11, or the image's smaller side when that is less (odd, so small images work too); 1 when
    identical.
    """
    if images.shape != reference.shape:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(reference.shape)}")
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    c, h, w = images.shape[1:]
    size = min(11, h, w)
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size).to(images.device)[None, None].expand(c, 1, size, size)
    x, y = images.double(), reference.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    return float((num / den).mean())


def channel_drift(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far the per-channel statistics of ``images`` moved from ``reference``'s (both ``(N, C, ...)``).

    ``mean_drift``: the largest absolute change of a channel's mean (in the [-1, 1] data range: a colour cast);
    ``std_drift``: the largest relative change of a channel's standard deviation (contrast; 0 when equal).
    """
    if images.shape[1:] != reference.shape[1:]:
        raise ValueError(f"shape mismatch: {tuple(images.shape)} vs {tuple(reference.shape)}")
    a = images.double().transpose(0, 1).reshape(images.shape[1], -1)
    b = reference.double().transpose(0, 1).reshape(reference.shape[1], -1)
    mean = (a.mean(1) - b.mean(1)).abs().max()
    std_ref = b.std(1).clamp_min(1e-12)
    std = (a.std(1) / std_ref - 1.0).abs().max()
    return {"mean_drift": float(mean), "std_drift": float(std)}


def image_metrics(images: torch.Tensor, reference: torch.Tensor, prefix: str = "") -> dict[str, float | None]:
    """MSE, PSNR (``None`` when identical), SSIM and the channel drifts of ``images`` against ``reference``, keyed
    ``{prefix}mse``, ``{prefix}psnr``, ``{prefix}ssim``, ``{prefix}mean_drift``, ``{prefix}std_drift``."""
    value = psnr(images, reference)
    out: dict[str, float | None] = {
        "mse": mse(images, reference),
        "psnr": value if math.isfinite(value) else None,
    }
    if images.dim() == 4:
        out["ssim"] = ssim(images, reference)
    out.update(channel_drift(images, reference))
    return {f"{prefix}{k}": v for k, v in out.items()}


def _sqrtm_psd(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed with symmetric square roots
    (numerically stable, no complex parts).
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross))
    return max(value, 0.0)


@dataclass
class FDDScorer:
    """Scores generated digits against the real ones in the classifier's feature space."""

    extractor: nn.Module
    real_features: np.ndarray
    batch_size: int = 256

    @classmethod
    def for_testbed(cls, features_dir: str | Path | None = None) -> FDDScorer:
        """The shipped classifier, with all 1,797 real digits as the reference set."""
        from supernet.zoo.digits import load_digits_tensor
        from supernet.zoo.features import FEATURES_DIR, load_features

        extractor = load_features(features_dir or FEATURES_DIR)
        real, _ = load_digits_tensor()
        scorer = cls(extractor, np.empty((0, 0)))
        scorer.real_features = scorer.features(real)
        return scorer

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """Feature vectors of images in [-1, 1], ``(N, D)``."""
        parts = [self.extractor.features(chunk.float()).numpy() for chunk in images.split(self.batch_size)]
        return np.concatenate(parts).astype(np.float64)

    @torch.no_grad()
    def classes(self, images: torch.Tensor) -> torch.Tensor:
        """The class the extractor's classifier head predicts for each image in [-1, 1] (``(N,)`` long)."""
        head = getattr(self.extractor, "head", None)
        if head is None:
            raise ValueError("this feature extractor has no classifier head")
        parts = [head(self.extractor.features(chunk.float())).argmax(1) for chunk in images.split(self.batch_size)]
        return torch.cat(parts)

    def score(self, images: torch.Tensor) -> float:
        """FDD of ``images`` against the real digits (lower is better)."""
        return frechet_distance(self.features(images), self.real_features)
