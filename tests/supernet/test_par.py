"""PAR: later rounds re-collect the calibration inputs from the quantized model's own trajectories and reconstruct
again with fewer iterations; the switches are settings (cache key), default on, and all-off is the baseline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from search.errors import ConfigError
from supernet.calibration import CalibrationData, CalibrationSession, CalibrationSettings, collect_calibration_data
from supernet.calibration.reconstruction import BlockReconstructor
from supernet.calibration.settings import SWITCHES
from supernet.supernet import QuantSupernet
from supernet.testing import TOY_SHAPE, params_key, random_data, toy_net
from supernet.zoo.testbed import random_testbed
from supernet.zoo.testbed import testbed_unet as make_testbed

LIGHT = CalibrationSettings(
    grid_steps=3,
    samples=4,
    mse_grid=8,
    act_max_elems=4096,
    tcr=False,
    daq=False,
    recon_iters=8,
    recon_samples=4,
    recon_batch=4,
    recon_epochs=1000.0,
    par_rounds=3,
)


def test_switches_are_settings_default_on_and_keyed():
    s = CalibrationSettings()
    assert s.strategy == "tcaq" and s.reconstruction and s.tcr and s.daq and s.par and s.par_rounds >= 2
    assert not s.tib and not s.dilation
    keys = {dataclasses.replace(s, **{name: not getattr(s, name)}).key() for name in SWITCHES}
    assert len(keys | {s.key()}) == len(SWITCHES) + 1
    assert CalibrationSettings.from_dict(s.to_dict()) == s
    for bad in (
        {"tcr": 1},
        {"par_rounds": 0},
        {"par_decay": 0.0},
        {"recon_warmup": 1.0},
        {"tcr_max": 0.5},
        {"recon_lr_round": -1.0},
        {"recon_batch": 0},
        {"daq_groups": 0},
        {"tcr_alpha": 1.5},
        {"tcr_alpha": -0.1},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CalibrationSettings(**bad)


def test_all_switches_off_is_exactly_the_range_baseline():
    data = random_data(TOY_SHAPE, n=6)
    off = dataclasses.replace(LIGHT, **dict.fromkeys(SWITCHES, False))
    built = {}
    for name, settings in (("tcaq", off), ("range", dataclasses.replace(off, strategy="range"))):
        sn = QuantSupernet.build(toy_net(), (4,), calib_settings=settings, sample_shape=TOY_SHAPE)
        sn.calibrate(data)
        built[name] = sn
    for site in built["tcaq"].sites:
        a, b = built["tcaq"].site(site), built["range"].site(site)
        assert torch.equal(a.slots[4].codes, b.slots[4].codes)
        assert [params_key(p) for p in a.act.tables[4]] == [params_key(p) for p in b.act.tables[4]]


@pytest.fixture(scope="module")
def trajectories() -> CalibrationData:
    return collect_calibration_data(
        random_testbed(0), CalibrationSettings(grid_steps=3, samples=2, seed=5), batch_size=2
    )


def test_later_rounds_use_the_quantized_trajectories_with_fewer_steps(trajectories, monkeypatch):
    seen: list[tuple[int, CalibrationData]] = []
    original_run = BlockReconstructor.run

    def spy(self: BlockReconstructor, opts, cache=None, on_block=None):
        seen.append((opts.iters, self.session.data))
        return original_run(self, opts, cache, on_block)

    monkeypatch.setattr(BlockReconstructor, "run", spy)
    settings = dataclasses.replace(LIGHT, samples=2, recon_samples=2)
    sn = QuantSupernet.build(make_testbed(0).eval(), (2,), calib_settings=settings)
    sn.calibrate(trajectories)
    assert [iters for iters, _ in seen] == [8, 2, 1]  # par_decay 0.25 per later round
    first, second, third = (d for _, d in seen)
    assert first is trajectories and second.source.get("resampled") and third.source.get("resampled")
    assert torch.equal(second.inputs[0], trajectories.inputs[0])  # same x_T: the same noise
    assert not torch.allclose(second.inputs[-1], trajectories.inputs[-1])  # W2A2's own trajectory drifts
    assert not torch.equal(third.inputs[-1], second.inputs[-1])  # round 3 follows round 2's quantizers
    report = sn.calibration_metadata["reconstruction"]["W2A2"]
    assert {"round_1", "round_2", "round_3", "resample_2_s", "resample_3_s"} <= set(report)


def test_resampled_inputs_are_the_quantized_models_trajectory(trajectories):
    """What round 2 sees equals sampling the model quantized as round 1 left it (and not the FP model)."""
    sn = QuantSupernet.build(make_testbed(0).eval(), (3,), calib_settings=LIGHT)
    sn._ctx.set_grid(trajectories.timesteps)
    bits = dict.fromkeys(sn.sites, 3)
    session = CalibrationSession(
        sn.model, {n: sn.site(n) for n in sn.sites}, sn._ctx, trajectories, LIGHT, sn.settings, bits, bits
    )
    session.fit_weights()
    session.fit_activations()
    recon = BlockReconstructor(session)
    with recon.quantized():
        again = session.resample()
    session.apply()  # the same quantizers through the supernet's ordinary path
    with torch.no_grad():
        direct = session.resample()
    assert torch.allclose(again.inputs, direct.inputs, atol=1e-5)
    assert not torch.allclose(again.inputs[-1], trajectories.inputs[-1], atol=1e-3)


def test_par_without_reconstruction_refits_ranges_and_without_trajectories_stops(trajectories, caplog):
    ranges_only = dataclasses.replace(LIGHT, reconstruction=False, par_rounds=2)
    with_par = QuantSupernet.build(make_testbed(0).eval(), (3,), calib_settings=ranges_only)
    with_par.calibrate(trajectories)
    without = QuantSupernet.build(
        make_testbed(0).eval(), (3,), calib_settings=dataclasses.replace(ranges_only, par=False)
    )
    without.calibrate(trajectories)
    site = "up_blocks.2.resnets.1.conv2"
    assert [float(p.scale) for p in with_par.site(site).act.tables[3]] != [
        float(p.scale) for p in without.site(site).act.tables[3]
    ]
    toy = QuantSupernet.build(toy_net(), (4,), calib_settings=LIGHT, sample_shape=TOY_SHAPE)
    toy.calibrate(random_data(TOY_SHAPE, n=4))  # no alphas_cumprod: one round, with a warning
    assert "PAR needs trajectories" in caplog.text
    assert set(toy.calibration_metadata["reconstruction"]["W4A4"]) == {"round_1"}
