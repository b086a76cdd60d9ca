"""The calibration report (:mod:`supernet.calibration.report`) saved with every supernet: uniform quality per bit
option against FP on held-out noise, an error ranking of the sites, the settings, and the range-fit check of W8A8
that fails a calibration loudly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from supernet.artifact import get_or_build_supernet, load_supernet
from supernet.calibration.report import REPORT_STEPS
from supernet.calibration.settings import SWITCHES
from supernet.catalog import list_supernets
from supernet.errors import CalibrationError
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.testing import TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import random_testbed

#: ``tcaq`` with every switch off: exactly the range fit (so the check against it passes with equal errors).
TCAQ_OFF = dataclasses.replace(TINY_CALIB, strategy="tcaq", report_ranking=True, **dict.fromkeys(SWITCHES, False))
#: A tiny TCR + reconstruction calibration: on the random-weight testbed its W8A8 is worse than the range fit's.
TINY_TCAQ = dataclasses.replace(
    TINY_CALIB, strategy="tcaq", recon_iters=4, recon_samples=4, recon_batch=4, par=False, tcr=True, daq=False
)


def test_a_calibration_saves_its_report_and_is_checked_against_the_range_fit(tmp_path: Path) -> None:
    model = random_testbed(0)
    sn = get_or_build_supernet(model, (4, 8), None, TCAQ_OFF, tmp_path, batch_size=4)
    report = sn.calibration_metadata["report"]
    assert len(report["schedule"]) == REPORT_STEPS and report["settings"] == TCAQ_OFF.to_dict()
    assert report["noise_seed"] != TCAQ_OFF.seed  # held-out noise, not the trajectories'
    assert set(report["bits"]) == {"4", "8"}
    for row in report["bits"].values():
        assert row["mse"] > 0 and row["psnr"] > 0
        ranking = row["ranking"]
        assert {r["name"] for r in ranking} == set(sn.sites)  # the testbed has few sites: one row each
        assert [r["rel_mse"] for r in ranking] == sorted((r["rel_mse"] for r in ranking), reverse=True)
    assert report["bits"]["8"]["psnr"] > report["bits"]["4"]["psnr"]
    check = report["range_check"]
    assert check["strategy"] == "range" and check["passed"] and report["bits"]["8"]["mse"] == check["mse"]
    sn.detach()
    # saved with the artifact: loaded back, and listed by the catalog
    (entry,) = list_supernets(tmp_path, [])
    assert entry.report == report and set(entry.quality()) == {4, 8}
    loaded = load_supernet(entry.path, random_testbed(0))
    assert loaded.calibration_metadata["report"] == report
    loaded.detach()


def test_a_calibration_worse_than_the_range_fit_fails_loudly_and_caches_nothing(tmp_path: Path) -> None:
    model = random_testbed(0)
    with pytest.raises(CalibrationError, match="W8A8 is worse than the plain range fit's"):
        get_or_build_supernet(model, (8,), None, TINY_TCAQ, tmp_path, batch_size=4)
    assert not [p for p in tmp_path.iterdir() if p.name != "calibration" and not p.name.endswith(".lock")]
    assert not any(isinstance(m, QuantWeightLayer) for m in model.denoiser.modules())  # left as it was


def test_a_range_calibration_is_not_checked_against_itself_and_a_bare_module_gets_no_report(tmp_path: Path) -> None:
    sn = get_or_build_supernet(random_testbed(0), (8,), None, TINY_CALIB, tmp_path / "a", batch_size=4)
    report = sn.calibration_metadata["report"]
    assert "range_check" not in report
    # report_ranking off (TINY_CALIB): the image quality without the ranking's denoiser passes
    assert report["ranking"] == {"skipped": "calibration.report_ranking is off"}
    assert report["bits"]["8"]["ranking"] == [] and report["bits"]["8"]["psnr"] > 0
    sn.detach()
    data = random_data(TOY_SHAPE)
    bare = get_or_build_supernet(toy_net(), (8,), None, TINY_CALIB, tmp_path / "b", data=data)
    assert "no noise schedule" in bare.calibration_metadata["report"]["skipped"]
    bare.detach()
