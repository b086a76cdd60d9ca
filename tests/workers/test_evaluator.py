"""The in-process evaluator's image metrics on the shipped testbed: the structural ones every candidate gets, and
the quantization error against FP on the candidate's own schedule (``schedule_reference``)."""

from __future__ import annotations

from typing import Any

import pytest

from search.errors import ConfigError
from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.metrics import mse
from supernet.models import TESTBED_DIR, load_model
from workers.evaluator import EvaluatorConfig, InProcessEvaluator

SCHEDULE = (750, 500, 250, 0)


def _evaluator(**config: Any) -> InProcessEvaluator:
    model = load_model(TESTBED_DIR, device="cpu")
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    supernet = load_supernet(shipped, model)
    settings = EvaluatorConfig(
        model_path=str(model.path), supernet_path=str(shipped), samples=8, seed=3, reference_steps=20, **config
    )
    return InProcessEvaluator(model, supernet, settings)


def test_quantization_error_is_measured_against_fp_on_the_candidates_own_schedule() -> None:
    evaluator = _evaluator(schedule_reference=True)
    supernet = evaluator.supernet
    fp, w8, w4 = (supernet.uniform(b, b, SCHEDULE) for b in (32, 8, 4))
    results = {r.key: r for r in evaluator.evaluate([fp, w8, w4])}
    assert all(r.ok for r in results.values()), results
    at_fp = results[fp.key()].extra
    assert at_fp["quant_mse"] == 0.0 and at_fp["quant_psnr"] is None and at_fp["quant_ssim"] == pytest.approx(1.0)
    assert at_fp["mse"] > 0  # four steps of FP are not the 20-step reference: the error of fewer steps
    fp_at_k = evaluator.fp_samples(SCHEDULE)
    for candidate in (w8, w4):
        extra = results[candidate.key()].extra
        with supernet.assembled(candidate):
            images = evaluator.sampler.sample(SCHEDULE, 8, 3)
        assert extra["quant_mse"] == pytest.approx(mse(images, fp_at_k))
        assert extra["mse"] == pytest.approx(mse(images, evaluator.reference))
    # W8 adds little to what four steps cost already; W4 adds more
    assert results[w8.key()].extra["quant_mse"] < at_fp["mse"]
    assert results[w8.key()].extra["quant_mse"] < results[w4.key()].extra["quant_mse"]
    # the total error is what the search ranks by, with or without the analysis
    plain = {r.key: r for r in _evaluator().evaluate([w8, w4])}
    for key, result in plain.items():
        assert result.quality == pytest.approx(results[key].quality)
        assert not any(name.startswith("quant_") for name in result.extra)
        assert {"ssim", "mean_drift", "std_drift"} <= set(result.extra)
        assert 0 < result.extra["ssim"] < 1 and result.extra["mean_drift"] >= 0


def test_schedule_reference_needs_the_reference_and_decoded_samples() -> None:
    base = {"model_path": "m", "supernet_path": "s"}
    with pytest.raises(ConfigError, match="schedule_reference"):
        EvaluatorConfig(**base, objective="latent_mse", schedule_reference=True)
    with pytest.raises(ConfigError, match="schedule_reference"):
        EvaluatorConfig(**base, objective="fdd", reference=False, schedule_reference=True)
