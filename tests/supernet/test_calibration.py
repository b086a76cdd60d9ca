"""Calibration settings, data, the strategy hook and the WbAb-at-once semantics of the range calibrator."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

from search.errors import ConfigError, VersionMismatchError
from supernet.calibration import (
    CalibrationData,
    CalibrationSession,
    CalibrationSettings,
    CalibrationStrategy,
    available_strategies,
    calibration_grid,
    collect_calibration_data,
    register_strategy,
)
from supernet.errors import CalibrationError
from supernet.quant import Log2Params, UniformParams, UniformQuantizer
from supernet.sampling import make_noise
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import random_testbed
from supernet.zoo.testbed import testbed_unet as make_testbed


def test_settings_are_validated_versioned_and_canonical():
    s = CalibrationSettings(strategy_params={"rounds": 2, "lr": 0.01})
    assert s.strategy_params == (("lr", 0.01), ("rounds", 2)) and s.param("rounds") == 2
    assert (
        CalibrationSettings.from_dict(s.to_dict()) == s and s.key() == CalibrationSettings.from_dict(s.to_dict()).key()
    )
    assert s.key() != dataclasses.replace(s, samples=65).key()
    assert s.to_dict()["version"] == 1 and set(s.data_dict()) == {
        "version",
        "grid_steps",
        "grid_spacing",
        "samples",
        "seed",
    }
    for bad in (
        {"samples": 0},
        {"grid_spacing": "log"},
        {"act_method": "kl"},
        {"mse_min_ratio": 0.0},
        {"pv_quantizer": "fp8"},
        {"strategy_params": {"x": [1]}},
        {"grid_steps": 2.5},
        {"mse_norm": float("nan")},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CalibrationSettings(**bad)
    with pytest.raises(VersionMismatchError):
        CalibrationSettings(version=2)
    with pytest.raises(ConfigError, match="unknown field"):
        CalibrationSettings.from_dict({"sample": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.samples = 3  # type: ignore[misc]


def test_grids_cover_the_whole_range():
    lin = calibration_grid(5, 1000)
    assert lin == [999, 749, 500, 250, 0]
    quad = calibration_grid(5, 1000, "quadratic")
    assert quad[0] == 999 and quad[-1] == 0 and quad == sorted(set(quad), reverse=True)
    assert quad[-2] < lin[-2]  # denser near t = 0
    assert calibration_grid(1, 1000) == [999]


def test_data_roundtrip_and_validation(tmp_path):
    data = random_data(TOY_SHAPE, n=3)
    data.save(tmp_path / "d.safetensors")
    back = CalibrationData.load(tmp_path / "d.safetensors")
    assert back.timesteps == data.timesteps and torch.equal(back.inputs, data.inputs)
    with pytest.raises(CalibrationError, match="strictly descending"):
        CalibrationData((1, 5), torch.zeros(2, 1, 1))
    with pytest.raises(CalibrationError, match="do not match"):
        CalibrationData((5, 1), torch.zeros(3, 1, 1))


def test_collected_data_follows_the_fp_trajectory_from_the_seed():
    model = random_testbed(0)
    data = collect_calibration_data(model, CalibrationSettings(grid_steps=3, samples=3, seed=7), batch_size=2)
    assert data.timesteps == (999, 500, 0) and tuple(data.inputs.shape) == (3, 3, *TESTBED_SHAPE)
    assert torch.equal(data.inputs[0], make_noise(3, TESTBED_SHAPE, 7))  # x_T is the seed's noise
    assert not torch.equal(data.inputs[1], data.inputs[0])
    assert data.source["seed"] == 7


def test_range_calibration_fits_each_layer_with_upstream_quantized():
    """At W4A4 the second layer's input range is fitted on the output of the *quantized* first layer."""
    model = toy_net()
    data = random_data(TOY_SHAPE, grid=(500,), n=8)
    settings = dataclasses.replace(TINY_CALIB, weight_method="minmax", act_method="minmax")
    sn = QuantSupernet.build(model, (4,), calib_settings=settings, sample_shape=TOY_SHAPE)
    sn.calibrate(data)
    x = data.inputs[0]
    conv_p = sn.site("conv").act.tables[4][0]
    assert float(conv_p.scale) == pytest.approx(float(UniformQuantizer().fit(x, 4).scale))
    with torch.no_grad():
        fp_fc_in = (
            model.act(torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias, padding=1)) + 0.5
        ).flatten(1)
    fc_p = sn.site("fc").act.tables[4][0]
    assert float(fc_p.scale) != pytest.approx(float(UniformQuantizer().fit(fp_fc_in, 4).scale), rel=1e-4)
    assert float(fc_p.scale) == pytest.approx(float(UniformQuantizer().fit(fp_fc_in, 4).scale), rel=0.1)


@register_strategy
class _Log2ForProbabilities(CalibrationStrategy):
    """A DAQ-shaped strategy: log2 for every post-softmax input, then the default fitting."""

    name = "test-log2-pv"
    prepared: ClassVar[list[tuple]] = []

    def prepare(self, supernet: QuantSupernet, data: CalibrationData) -> None:
        _Log2ForProbabilities.prepared.append(supernet.state())

    def _calibrate(self, session: CalibrationSession) -> None:
        for q in session.act_quantizers():
            if q.site.endswith(".pv") and q.role == "a":
                session.set_kind(q, "log2")
        with pytest.raises(ConfigError, match="only for post-softmax"):
            session.set_kind(next(q for q in session.act_quantizers() if q.role == "x"), "log2")
        session.fit_weights()
        session.fit_activations()


@register_strategy
class _Forgetful(CalibrationStrategy):
    name = "test-forgetful"

    def _calibrate(self, session: CalibrationSession) -> None:
        session.fit_weights()


def test_strategy_hook_chooses_log2_per_site_and_is_checked_for_completeness():
    assert {"range", "test-log2-pv"} <= set(available_strategies())
    settings = dataclasses.replace(TINY_CALIB, strategy="test-log2-pv")
    sn = QuantSupernet.build(make_testbed(0).eval(), (4,), calib_settings=settings)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 0), n=2))
    assert _Log2ForProbabilities.prepared[-1] == tuple((n, 32, 32) for n in sn.sites)
    pv = sn.site("mid_block.attentions.0.pv")
    assert all(isinstance(p, Log2Params) for p in pv.a.tables[4])
    assert all(isinstance(p, UniformParams) for p in pv.b.tables[4])
    assert all(isinstance(p, UniformParams) for p in sn.site("mid_block.attentions.0.qk").a.tables[4])

    forgetful = QuantSupernet.build(
        toy_net(),
        (4,),
        calib_settings=dataclasses.replace(TINY_CALIB, strategy="test-forgetful"),
        sample_shape=TOY_SHAPE,
    )
    with pytest.raises(CalibrationError, match="without parameters at timestep"):
        forgetful.calibrate(random_data(TOY_SHAPE))
    # An unknown strategy is refused when the settings are made, before any supernet is built.
    with pytest.raises(ConfigError, match="unknown calibration strategy 'nope'"):
        dataclasses.replace(TINY_CALIB, strategy="nope")


def test_pv_quantizer_setting_and_wrong_data_shape():
    settings = dataclasses.replace(TINY_CALIB, pv_quantizer="log2")
    sn = QuantSupernet.build(make_testbed(0).eval(), (8,), calib_settings=settings)
    with pytest.raises(CalibrationError, match="do not match"):
        sn.calibrate(random_data(TOY_SHAPE))
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(500,), n=2))
    assert isinstance(sn.site("up_blocks.1.attentions.1.pv").a.tables[8][0], Log2Params)


def test_weights_below_weight_minmax_below_take_min_max_ranges_whatever_the_method():
    def outlying() -> torch.nn.Module:  # one large weight per output channel: MSE clips it, min-max does not
        net = toy_net()
        with torch.no_grad():
            net.fc.weight[:, 0] = 6 * net.fc.weight.abs().amax()
        return net

    data = random_data(TOY_SHAPE, grid=(500,), n=8)
    w = outlying().fc.weight.detach()
    fit = {
        m: {
            b: UniformQuantizer(
                axis=0, method=m, grid=TINY_CALIB.mse_grid, min_ratio=TINY_CALIB.mse_min_ratio, norm=TINY_CALIB.mse_norm
            ).fit(w, b)
            for b in (4, 6)
        }
        for m in ("minmax", "mse")
    }
    assert not torch.equal(fit["minmax"][4].scale, fit["mse"][4].scale)  # the test can tell them apart
    for below, methods in ((6, {4: "minmax", 6: "mse"}), (0, {4: "mse", 6: "mse"})):
        settings = dataclasses.replace(TINY_CALIB, weight_method="mse", weight_minmax_below=below)
        sn = QuantSupernet.build(outlying(), (4, 6), calib_settings=settings, sample_shape=TOY_SHAPE)
        sn.calibrate(data)
        for bits, method in methods.items():
            assert torch.equal(sn.site("fc").slots[bits].params.scale, fit[method][bits].scale), (below, bits)
    assert CalibrationSettings().weight_minmax_below == 6 and CalibrationSettings().weight_method == "mse"
    with pytest.raises(ConfigError, match="weight_minmax_below"):
        CalibrationSettings(weight_minmax_below=-1)
