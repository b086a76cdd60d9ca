"""The calibration time estimate (:mod:`supernet.calibration.estimate`): its work counts follow the settings the
calibration itself follows, and it scales with the model's measured forward time and the bit options."""

from __future__ import annotations

import dataclasses

import pytest

from supernet.calibration.estimate import (
    COST_FACTORS,
    estimate_calibration,
    estimate_from_forward,
    forward_seconds_per_sample,
    reconstruction_steps,
)
from supernet.calibration.reconstruction import ReconOptions
from supernet.calibration.settings import CalibrationSettings
from supernet.testing import TINY_CALIB
from supernet.zoo.testbed import random_testbed

DEFAULT = CalibrationSettings()


@pytest.mark.parametrize(
    "change",
    [{}, {"recon_iters": 200}, {"par": False}, {"par_rounds": 3}, {"recon_iters": 5000}, {"recon_samples": 4}],
)
@pytest.mark.parametrize("bits", [4, 6, 8])
def test_reconstruction_steps_are_the_reconstructors(change: dict, bits: int) -> None:
    s = dataclasses.replace(DEFAULT, **change)
    pool = s.grid_steps * min(s.recon_samples, s.samples)
    rounds = s.par_rounds if s.par else 1
    expected = [ReconOptions.from_settings(s, r, bits).steps_for(pool) for r in range(rounds)]
    assert reconstruction_steps(s, bits) == expected
    assert reconstruction_steps(dataclasses.replace(s, reconstruction=False), bits) == []


def test_wide_codes_reconstruct_for_their_own_steps() -> None:
    s = dataclasses.replace(DEFAULT, recon_iters=200, recon_iters_wide=50, par_decay=0.5)
    assert ReconOptions.from_settings(s, 0, 4).iters == 200 and ReconOptions.from_settings(s, 0, 5).iters == 200
    assert ReconOptions.from_settings(s, 0, 6).iters == 50 and ReconOptions.from_settings(s, 1, 7).iters == 25
    assert ReconOptions.from_settings(s, 0, 8).iters == 200  # W8 reconstructs in full by default
    old = dataclasses.replace(s, recon_wide_below=9)  # before the field: the wide count at W8 too
    assert ReconOptions.from_settings(old, 1, 8).iters == 25
    assert "recon_wide_below" not in old.cache_dict() and s.cache_dict()["recon_wide_below"] == 8  # a new key
    assert CalibrationSettings.from_dict(old.to_dict()) == old and CalibrationSettings.from_dict(s.to_dict()) == s
    stored = {k: v for k, v in old.to_dict().items() if k != "recon_wide_below"}  # written before the field
    assert CalibrationSettings.from_stored(stored) == old
    assert CalibrationSettings.from_dict(stored).recon_wide_below == 8  # a job spec that does not name it
    flat = dataclasses.replace(s, recon_iters_wide=None)
    assert {ReconOptions.from_settings(flat, 0, b).iters for b in (2, 4, 6, 8)} == {200}
    assert flat.to_dict()["recon_iters_wide"] is None and s.to_dict()["recon_iters_wide"] == 50  # both in the key
    assert CalibrationSettings.from_dict(flat.to_dict()) == flat


def test_which_rounds_learn_the_rounding() -> None:
    s = dataclasses.replace(DEFAULT, par_rounds=3)
    learns = {(r, b): ReconOptions.from_settings(s, r, b).round_weights for r in range(3) for b in (4, 6, 8)}
    assert learns == {(r, b): r == 0 for r in range(3) for b in (4, 6, 8)}  # later PAR rounds: step sizes only
    again = dataclasses.replace(s, par_rounding=True)  # the behaviour before the field
    assert all(ReconOptions.from_settings(again, r, b).round_weights for r in range(3) for b in (4, 6, 8))
    assert "par_rounding" not in again.cache_dict() and s.cache_dict()["par_rounding"] is False  # a new key
    stored = {k: v for k, v in again.to_dict().items() if k != "par_rounding"}  # an artifact written before it
    assert CalibrationSettings.from_stored(stored) == again
    assert CalibrationSettings.from_dict(stored).par_rounding is False  # a job spec that does not name it
    w8_steps = dataclasses.replace(s, recon_round_below=8, recon_wide_below=9)  # W8 learns its step sizes only
    w8 = ReconOptions.from_settings(w8_steps, 0, 8)
    assert not w8.round_weights and w8.iters == 50 and ReconOptions.from_settings(w8_steps, 0, 6).round_weights
    assert "recon_round_below" not in s.cache_dict() and w8_steps.cache_dict()["recon_round_below"] == 8


def test_the_estimate_scales_with_forward_time_and_bit_options() -> None:
    one = estimate_from_forward(1e-3, (6,), DEFAULT, blocks=10)
    assert one.seconds == pytest.approx(one.per_bits[6] + one.phases["trajectories"] + one.phases["prepare"])
    three = estimate_from_forward(1e-3, (6, 6, 6), DEFAULT, blocks=10)
    assert three.seconds - one.seconds == pytest.approx(2 * one.per_bits[6])
    assert estimate_from_forward(2e-3, (6, 6, 6), DEFAULT, blocks=10).seconds == pytest.approx(2 * three.seconds)
    # the ranges phase is grid x samples forwards at its factor; the reconstruction dominates the default
    assert one.phases["ranges"] == pytest.approx(COST_FACTORS["ranges"] * 1e-3 * DEFAULT.grid_steps * DEFAULT.samples)
    assert one.phases["reconstruction"] > one.phases["ranges"]
    assert one.to_dict()["forward_ms_per_sample"] == 1.0
    decayed = estimate_from_forward(1e-3, (4, 6, 8), dataclasses.replace(DEFAULT, recon_iters_wide=20), blocks=10)
    assert decayed.per_bits[6] < decayed.per_bits[4] == pytest.approx(decayed.per_bits[8])


def test_switches_remove_their_phases() -> None:
    plain = estimate_from_forward(1e-3, (4,), dataclasses.replace(DEFAULT, par=False, tcr=False), blocks=10)
    assert plain.phases["par-trajectories"] == 0.0 and plain.phases["prepare"] == 0.0
    ranges = estimate_from_forward(1e-3, (4,), TINY_CALIB, blocks=10)  # the "range" strategy: ranges only
    assert set(ranges.phases) == {"trajectories", "prepare", "ranges"} and ranges.phases["prepare"] == 0.0
    fewer = estimate_from_forward(1e-3, (4,), dataclasses.replace(DEFAULT, recon_iters=10), blocks=10)
    assert (
        fewer.phases["reconstruction"] < estimate_from_forward(1e-3, (4,), DEFAULT, blocks=10).phases["reconstruction"]
    )


def test_the_forward_time_is_measured_on_the_model() -> None:
    model = random_testbed(0)
    per_sample = forward_seconds_per_sample(model, 4)
    assert 0 < per_sample < 1.0
    estimate = estimate_calibration(model, (4, 8), TINY_CALIB)
    assert set(estimate.per_bits) == {4, 8} and estimate.forward_ms_per_sample > 0 and estimate.seconds > 0
