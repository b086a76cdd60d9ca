"""``calibration.restarts``: every bit option calibrated several times with other seeds on the same trajectories,
the best kept by its uniform candidate's image error on noise that neither the trajectories nor the report use."""

from __future__ import annotations

import dataclasses

import pytest

from search.errors import ConfigError
from supernet.calibration import CalibrationSettings, collect_calibration_data
from supernet.calibration.estimate import estimate_from_forward
from supernet.errors import CalibrationError
from supernet.supernet import QuantSupernet, kept_restarts_report, restart_seed
from supernet.testing import TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import random_testbed

#: A tcaq calibration small enough for a test, with enough reconstruction that the seed matters.
SMALL = CalibrationSettings(grid_steps=3, samples=8, recon_samples=8, recon_batch=4, recon_iters=12, par=False)


def _calibrated(settings: CalibrationSettings, bits: tuple[int, ...] = (4,)) -> QuantSupernet:
    model = random_testbed(0)
    data = collect_calibration_data(model, settings, batch_size=8)
    supernet = QuantSupernet.build(model, bits, calib_settings=settings)
    supernet.calibrate(data)
    return supernet


@pytest.mark.slow
def test_restarts_keep_the_best_calibration_of_each_bit_option() -> None:
    supernet = _calibrated(dataclasses.replace(SMALL, restarts=2, seed=5))
    meta = supernet.calibration_metadata["restarts"]
    assert meta["count"] == 2 and meta["judged_on"]["samples"] == 64 and set(meta["bits"]) == {"4"}
    scores, kept = meta["bits"]["4"]["mse"], meta["bits"]["4"]["kept"]
    assert len(scores) == 2 and len(set(scores)) == 2, "the seeds made no difference"
    assert scores[kept] == min(scores)
    # what is left in the supernet is the kept restart
    assert supernet._restart_score(4) == pytest.approx(scores[kept], rel=1e-5)
    # restart 0 is the plain calibration: the same seed and trajectories give the same first score
    once = _calibrated(dataclasses.replace(SMALL, seed=5))
    assert "restarts" not in once.calibration_metadata
    assert once._restart_score(4) == pytest.approx(scores[0], rel=1e-5)
    # a bit option's state is copied out and put back whole: another calibration's state changes the score, the
    # copy brings it back exactly
    kept_state = supernet._bit_state(4)
    supernet._set_bit_state(4, _calibrated(dataclasses.replace(SMALL, seed=6))._bit_state(4))
    assert supernet._restart_score(4) != pytest.approx(scores[kept], rel=1e-5)
    supernet._set_bit_state(4, kept_state)
    assert supernet._restart_score(4) == pytest.approx(scores[kept], rel=1e-5)


def test_restarts_are_validated_seeded_apart_and_estimated() -> None:
    with pytest.raises(ConfigError, match="restarts"):
        CalibrationSettings(restarts=0)
    with pytest.raises(ConfigError, match="restarts"):
        CalibrationSettings(restarts=11)
    assert CalibrationSettings().to_dict().get("restarts") is None  # the default keeps existing cache keys
    assert CalibrationSettings(restarts=2).to_dict()["restarts"] == 2
    assert restart_seed(7, 0) == 7 and len({restart_seed(7, r) for r in range(10)}) == 10
    assert 0 <= restart_seed(2**63 - 1, 3) < 2**63
    once = estimate_from_forward(1e-3, (4, 8), SMALL, blocks=4)
    twice = estimate_from_forward(1e-3, (4, 8), dataclasses.replace(SMALL, restarts=2), blocks=4)
    assert twice.per_bits[4] > 2 * once.per_bits[4] and twice.phases["restarts"] > 0


def test_restarts_need_a_model_that_samples() -> None:
    supernet = QuantSupernet.build(
        toy_net(), (4,), calib_settings=CalibrationSettings(restarts=2), sample_shape=TOY_SHAPE
    )
    with pytest.raises(CalibrationError, match="restarts needs a model that samples"):
        supernet.calibrate(random_data(TOY_SHAPE, n=4))


def test_the_kept_restarts_strategy_report_replaces_the_last_ones() -> None:
    last = {"switches": {"par": True}, "reconstruction": {"W4A4": {"r": "last"}, "W8A8": {"r": "w8"}}, "daq": {"s": 1}}
    kept = {4: {"switches": {"par": True}, "reconstruction": {"W4A4": {"r": "kept"}}, "grad_align": {"W4A4": [1]}}}
    merged = kept_restarts_report(last, kept)
    assert merged["reconstruction"] == {"W4A4": {"r": "kept"}, "W8A8": {"r": "w8"}}
    assert merged["daq"] == {"s": 1} and merged["switches"] == {"par": True} and "grad_align" not in merged
    assert last["reconstruction"]["W4A4"] == {"r": "last"}  # the strategy's own report is not changed
