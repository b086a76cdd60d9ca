"""Save → load → identical outputs; mismatched versions and models refused; the cache skips recalibration."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from search.errors import VersionMismatchError
from supernet.artifact import (
    META_FILE,
    SHIPPED_DIR,
    TENSORS_FILE,
    default_cache_dir,
    get_calibration_data,
    get_or_build_supernet,
    load_supernet,
)
from supernet.calibration import CalibrationData, CalibrationSettings
from supernet.identity import cache_key
from supernet.models import ModuleAdapter, NoiseSchedule, UNet2DAdapter
from supernet.settings import SupernetSettings
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, TOY_SHAPE, calibrated_testbed, random_data, toy_net
from supernet.zoo.testbed import testbed_unet as make_testbed


def _out(sn: QuantSupernet, x: torch.Tensor, t: int) -> torch.Tensor:
    with torch.no_grad():
        return sn.denoiser(x, t).sample


def count_calibrations(monkeypatch: pytest.MonkeyPatch) -> list[CalibrationData]:
    """From now on, every ``QuantSupernet.calibrate`` call still calibrates and appends its data to the list."""
    calls: list[CalibrationData] = []
    original = QuantSupernet.calibrate

    def counting(self: QuantSupernet, d: CalibrationData, progress=None, estimate=None) -> None:
        calls.append(d)
        original(self, d, progress, estimate)

    monkeypatch.setattr(QuantSupernet, "calibrate", counting)
    return calls


def test_save_load_gives_identical_outputs_on_the_testbed(tmp_path):
    sn = calibrated_testbed(bits=(4, 8))
    path = sn.save(tmp_path / "art")
    loaded = QuantSupernet.load(path, make_testbed(0).eval())
    assert loaded.sites == sn.sites and loaded.grid == sn.grid and loaded.bit_options == (4, 8)
    assert loaded.cost_model == sn.cost_model and loaded.site_blocks == sn.site_blocks
    x = torch.randn(2, *TESTBED_SHAPE)
    for seed in range(2):
        cand = sn.random_candidate(random.Random(seed), (800, 20))
        with sn.assembled(cand), loaded.assembled(cand):
            for t in (999, 480, 2):
                assert torch.equal(_out(sn, x, t), _out(loaded, x, t))
    meta = json.loads((path / META_FILE).read_text())
    assert meta["format_version"] == 1 and meta["model_hash"] == sn.model_hash
    assert meta["calibration"] == TINY_CALIB.to_dict() and meta["bit_options"] == [4, 8]


def _toy_artifact(tmp_path):
    sn = QuantSupernet.build(toy_net(), (4, 8), calib_settings=TINY_CALIB, sample_shape=TOY_SHAPE)
    sn.calibrate(random_data(TOY_SHAPE, n=8))
    return sn, sn.save(tmp_path / "toy")


def test_load_refuses_another_model_or_format(tmp_path):
    _, path = _toy_artifact(tmp_path)
    with pytest.raises(VersionMismatchError, match="not for this model"):
        load_supernet(path, toy_net(seed=1))
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = 99
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(VersionMismatchError, match="format version 99"):
        load_supernet(path, toy_net())


def test_uncalibrated_supernet_cannot_be_saved(tmp_path):
    from supernet.errors import CalibrationError

    sn = QuantSupernet.build(toy_net(), (8,), sample_shape=TOY_SHAPE)
    with pytest.raises(CalibrationError, match="calibrated"):
        sn.save(tmp_path / "x")


def test_cache_builds_once_and_keys_on_settings(tmp_path, monkeypatch):
    data = random_data(TOY_SHAPE, n=8)
    first = get_or_build_supernet(toy_net(), (4, 8), None, TINY_CALIB, tmp_path, data=data)
    calls = count_calibrations(monkeypatch)
    second = get_or_build_supernet(toy_net(), (8, 4), None, TINY_CALIB, tmp_path, data=data)
    assert calls == []  # loaded, not calibrated
    cand = first.random_candidate(random.Random(3), (100,))
    x = torch.randn(3, *TOY_SHAPE)
    with first.assembled(cand), second.assembled(cand), torch.no_grad():
        assert torch.equal(first.denoiser(x, 100), second.denoiser(x, 100))
    other = CalibrationSettings(grid_steps=3, samples=4, mse_grid=12, act_max_elems=4096, act_method="minmax")
    get_or_build_supernet(toy_net(), (4, 8), None, other, tmp_path, data=data)
    assert len(calls) == 1  # different calibration settings: a different artifact
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    h = first.model_hash
    assert cache_key(h, (4, 8), SupernetSettings(), TINY_CALIB) == cache_key(h, [8, 4], SupernetSettings(), TINY_CALIB)
    assert cache_key(h, (4, 8), SupernetSettings(), TINY_CALIB) != cache_key(h, (4, 8), SupernetSettings(), other)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPQ_DATA_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "supernets"
    monkeypatch.delenv("TMPQ_DATA_DIR")
    assert str(default_cache_dir()) == "data/supernets"


def test_calibration_data_is_collected_once(tmp_path, monkeypatch):
    from diffusers import DDPMScheduler

    schedule = NoiseSchedule(DDPMScheduler(1000).alphas_cumprod)
    model = UNet2DAdapter(make_testbed(0).eval(), schedule=schedule, model_hash="testbed-random-0")
    settings = CalibrationSettings(grid_steps=3, samples=2)
    data = get_calibration_data(model, settings, tmp_path)
    assert data.timesteps == (999, 500, 0) and tuple(data.inputs.shape) == (3, 2, *TESTBED_SHAPE)
    monkeypatch.setattr("supernet.artifact.collect_calibration_data", lambda *a, **k: pytest.fail("recollected"))
    again = get_calibration_data(model, settings, tmp_path)
    assert torch.equal(again.inputs, data.inputs) and again.source["model_hash"] == "testbed-random-0"
    assert isinstance(again, CalibrationData) and again.alphas_cumprod is not None


def test_a_supernet_shipped_with_the_model_is_used_instead_of_calibrating(tmp_path, monkeypatch):
    data = random_data(TOY_SHAPE, n=8)
    built = get_or_build_supernet(toy_net(), (4, 8), None, TINY_CALIB, tmp_path / "build", data=data)
    entry = next(p for p in (tmp_path / "build").iterdir() if (p / META_FILE).is_file())
    model_dir = tmp_path / "model"
    shutil.copytree(entry, model_dir / SHIPPED_DIR / entry.name)
    calls = count_calibrations(monkeypatch)
    model = ModuleAdapter(toy_net(), sample_shape=TOY_SHAPE, path=model_dir)
    shipped = get_or_build_supernet(model, (4, 8), None, TINY_CALIB, tmp_path / "cache", data=data)
    assert calls == [] and (tmp_path / "cache" / entry.name / META_FILE).is_file()  # adopted into the cache
    cand = built.random_candidate(random.Random(5), (100,))
    x = torch.randn(3, *TOY_SHAPE)
    with built.assembled(cand), shipped.assembled(cand), torch.no_grad():
        assert torch.equal(built.denoiser(x, 100), shipped.denoiser(x, 100))
    # a shipped artifact that does not load is not used: the supernet is calibrated as usual
    (model_dir / SHIPPED_DIR / entry.name / TENSORS_FILE).write_bytes(b"not safetensors")
    again = get_or_build_supernet(
        ModuleAdapter(toy_net(), sample_shape=TOY_SHAPE, path=model_dir),
        (4, 8),
        None,
        TINY_CALIB,
        tmp_path / "other-cache",
        data=data,
    )
    assert len(calls) == 1 and again.calibrated
