"""The quality metrics on known inputs, and the shipped model against a random one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supernet.metrics import frechet_distance, mse, psnr
from supernet.sampling import uniform_schedule


def test_psnr_known_values():
    a = torch.zeros(2, 1, 4, 4)
    assert psnr(a, a) == math.inf
    b = a + 0.2  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    assert mse(b, a) == pytest.approx(0.04)
    assert psnr(b, a) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        mse(a, torch.zeros(3, 1, 4, 4))


def test_frechet_distance_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.normal(0.0, 1.0, size=(n, 2))
    b = rng.normal([1.0, -2.0], [2.0, 3.0], size=(n, 2))
    # |mu|^2 + sum (sigma_a - sigma_b)^2 = 5 + (1 + 4) = 10
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=0.02)


def test_frechet_distance_grows_with_shift():
    x = np.random.default_rng(2).normal(size=(1000, 4))
    values = [frechet_distance(x, x + s) for s in (0.1, 0.5, 1.0)]
    assert values[0] < values[1] < values[2]
    assert values[2] == pytest.approx(4.0, rel=1e-6)


def test_fdd_identical_and_shifted_images(fdd_scorer):
    from supernet.zoo.digits import load_digits_tensor

    real, _ = load_digits_tensor()
    assert fdd_scorer.score(real) == pytest.approx(0.0, abs=1e-6)
    small = fdd_scorer.score((real + 0.2).clamp(-1, 1))
    large = fdd_scorer.score((real + 0.8).clamp(-1, 1))
    assert 0.0 < small < large


@pytest.mark.slow
def test_shipped_model_beats_random_init_by_a_wide_margin(testbed_model, fdd_scorer):
    from supernet.zoo.testbed import random_testbed

    sched = uniform_schedule(10, 1000)
    trained = fdd_scorer.score(testbed_model.sampler().sample(sched, n=256, seed=0))
    random_model = random_testbed(seed=1)
    untrained = fdd_scorer.score(random_model.sampler().sample(sched, n=256, seed=0))
    assert trained * 10 < untrained, (trained, untrained)


def _images(seed: int = 0, shape: tuple[int, ...] = (6, 3, 16, 16)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) * 1.6 - 0.8).float()


def test_ssim_is_one_for_identical_images_and_drops_with_noise_and_colour_casts() -> None:
    from supernet.metrics import ssim

    images = _images()
    assert ssim(images, images) == pytest.approx(1.0)
    noisy = images + 0.05 * _images(1)
    cast = images.clone()
    cast[:, 0] += 0.3  # a red cast: the luminance of the other channels is untouched
    assert 0.0 < ssim(noisy, images) < 1.0
    assert ssim(cast, images) < 0.999
    assert ssim(images + 0.3 * _images(2), images) < ssim(noisy, images)  # more noise, less similar


def test_ssim_works_on_the_testbeds_small_images_and_refuses_bad_shapes() -> None:
    from supernet.metrics import ssim

    small = _images(shape=(4, 1, 8, 8))  # window shrinks to 7 (odd, within the image)
    assert ssim(small, small) == pytest.approx(1.0)
    assert ssim(small + 0.1, small) < 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        ssim(small, _images(shape=(4, 1, 8, 7)))
    with pytest.raises(ValueError, match="expected"):
        ssim(small[0], small[0])


def test_channel_drift_measures_a_colour_cast_and_a_contrast_change_exactly() -> None:
    from supernet.metrics import channel_drift

    images = _images()
    assert channel_drift(images, images) == {"mean_drift": 0.0, "std_drift": 0.0}
    cast = images.clone()
    cast[:, 2] -= 0.25
    assert channel_drift(cast, images)["mean_drift"] == pytest.approx(0.25)
    assert channel_drift(cast, images)["std_drift"] == pytest.approx(0.0, abs=1e-6)
    flat = images.clone()
    mean = flat[:, 1].mean()
    flat[:, 1] = mean + 0.5 * (flat[:, 1] - mean)  # half the contrast in the green channel, same mean
    drift = channel_drift(flat, images)
    assert drift["std_drift"] == pytest.approx(0.5) and drift["mean_drift"] == pytest.approx(0.0, abs=1e-6)


def test_image_metrics_names_each_metric_with_the_prefix() -> None:
    from supernet.metrics import image_metrics

    images = _images()
    same = image_metrics(images, images, prefix="quant_")
    assert set(same) == {"quant_mse", "quant_psnr", "quant_ssim", "quant_mean_drift", "quant_std_drift"}
    assert same["quant_mse"] == 0.0 and same["quant_psnr"] is None  # identical: no finite PSNR
    other = image_metrics(images + 0.1, images)
    assert other["mse"] == pytest.approx(0.01) and other["psnr"] == pytest.approx(psnr(images + 0.1, images))
