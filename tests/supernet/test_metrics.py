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
