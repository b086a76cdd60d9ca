"""DAQ: the power-law fit and likelihood-ratio decision on synthetic data, and the per-(site, timestep group)
choice wired into the activation tables and the supernet's saved metadata."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from search.errors import ConfigError
from supernet.artifact import META_FILE
from supernet.calibration import CalibrationSettings
from supernet.calibration import tcaq as tcaq_module
from supernet.calibration.daq import PowerLawTest, fit_power_law, power_law_test, timestep_groups
from supernet.calibration.tcaq import daq_kind
from supernet.quant import Log2Params, UniformParams
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, random_data
from supernet.zoo.testbed import testbed_unet as make_testbed


def _pareto(n: int, alpha: float, xmin: float, seed: int) -> torch.Tensor:
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * (1.0 - u).pow(-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [1.6, 2.5, 3.5])
def test_power_law_data_chooses_log2_and_recovers_alpha(alpha):
    x = _pareto(20000, alpha, 1e-3, seed=int(alpha * 10))
    test = power_law_test(x[x <= 1.0])
    assert test.choice == "log2" and test.R > 0 and test.R_norm > 2
    assert test.alpha == pytest.approx(alpha, rel=0.1)


@pytest.mark.parametrize("data", ["uniform", "narrow-uniform", "exponential", "flat-softmax"])
def test_light_tailed_data_chooses_uniform(data):
    gen = torch.Generator().manual_seed(3)
    x = {
        "uniform": lambda: torch.rand(20000, generator=gen),
        "narrow-uniform": lambda: 0.01 + 0.05 * torch.rand(20000, generator=gen),
        "exponential": lambda: torch.empty(20000).exponential_(20.0, generator=gen),
        "flat-softmax": lambda: (0.3 * torch.randn(300, 64, generator=gen)).softmax(-1),
    }[data]()
    test = power_law_test(x)
    assert test.choice == "uniform" and test.R < 0 and test.R_norm < -2


def test_peaked_softmax_is_power_law_like():
    gen = torch.Generator().manual_seed(4)
    test = power_law_test((4.0 * torch.randn(300, 64, generator=gen)).softmax(-1))
    assert test.choice == "log2" and test.R > 0


def test_mle_is_the_closed_form_and_degenerate_input_is_uniform():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    alpha, ll = fit_power_law(x, 1.0)
    assert alpha == pytest.approx(1 + 4 / (math.log(2) + math.log(4) + math.log(8)))
    assert float(ll[0]) == pytest.approx(math.log(alpha - 1))
    assert power_law_test(torch.zeros(100)).choice == "uniform"
    assert timestep_groups(10, 4) == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert timestep_groups(2, 4) == [[0], [1]]


#: DAQ alone (no reconstruction, TCR or PAR) on a tiny grid: the range fit with DAQ's kinds.
DAQ_ONLY = CalibrationSettings(
    grid_steps=4, samples=2, mse_grid=8, act_max_elems=4096, reconstruction=False, tcr=False, par=False
)


def test_choices_and_ratios_reach_the_tables_and_the_saved_metadata(tmp_path, monkeypatch):
    """``daq_rule: power_law``, group 0 forced to log2, the rest to uniform: every .pv probability table follows,
    per timestep."""
    real = power_law_test
    calls = []

    def scripted(values: torch.Tensor) -> PowerLawTest:
        fitted = real(values)
        calls.append(fitted)
        choice = "log2" if len(calls) % 2 == 1 else "uniform"
        return PowerLawTest(choice, fitted.R, fitted.R_norm, fitted.alpha, fitted.xmin, fitted.n, fitted.ks)

    monkeypatch.setattr(tcaq_module, "power_law_test", scripted)
    settings = dataclasses.replace(DAQ_ONLY, daq_groups=2, recon_samples=2, daq_rule="power_law")
    sn = QuantSupernet.build(make_testbed(0).eval(), (4, 6), calib_settings=settings)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 600, 300, 0), n=2))
    daq = sn.calibration_metadata["daq"]
    pvs = [n for n in sn.sites if n.endswith(".pv")]
    assert sorted(daq) == pvs and len(calls) == 2 * len(pvs)
    for site in pvs:
        groups = daq[site]
        assert [g["timesteps"] for g in groups] == [[999, 600], [300, 0]]
        assert [g["choice"] for g in groups] == ["log2", "uniform"]
        assert all(isinstance(g["R"], float) and g["n"] > 0 for g in groups)
        for bits in (4, 6):
            table = sn.site(site).a.tables[bits]
            assert [type(p) for p in table] == [Log2Params, Log2Params, UniformParams, UniformParams]
            assert all(isinstance(p, UniformParams) for p in sn.site(site).b.tables[bits])  # V stays uniform
        check = sn.calibration_metadata["daq_check"]["W4A4"][site]
        assert all(c["mse_log2"] > 0 and c["mse_uniform"] > 0 for c in check)
    meta = json.loads((sn.save(tmp_path / "daq") / META_FILE).read_text())
    assert meta["calibration_metadata"]["daq"] == json.loads(json.dumps(daq))


def test_the_error_rule_keeps_the_kind_with_the_lower_error_whatever_the_test_says(monkeypatch):
    """``daq_rule: error``: the test says log2 everywhere, each timestep's table keeps the kind whose quantization
    error on the observed probabilities is lower (reported per timestep as ``kept``)."""

    def always_log2(values: torch.Tensor) -> PowerLawTest:
        fitted = power_law_test(values)
        return PowerLawTest("log2", fitted.R, fitted.R_norm, fitted.alpha, fitted.xmin, fitted.n, fitted.ks)

    monkeypatch.setattr(tcaq_module, "power_law_test", always_log2)
    settings = dataclasses.replace(DAQ_ONLY, daq_rule="error")
    sn = QuantSupernet.build(make_testbed(0).eval(), (4, 8), calib_settings=settings)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 600, 300, 0), n=2))
    kinds = {"log2": Log2Params, "uniform": UniformParams}
    seen = set()
    for label, bits in (("W4A4", 4), ("W8A8", 8)):
        for site, rows in sn.calibration_metadata["daq_check"][label].items():
            kept = [k for row in rows for k in row["kept"]]
            assert [type(p) for p in sn.site(site).a.tables[bits]] == [kinds[k] for k in kept]
            for row in rows:
                assert row["choice"] == "log2"
                if len(row["kept"]) == 1:  # one timestep: its errors are the row's
                    assert row["kept"][0] == ("log2" if row["mse_log2"] < row["mse_uniform"] else "uniform")
            seen.update(kept)
    assert "uniform" in seen  # the test's log2 was overruled somewhere


def test_the_guarded_rule_overrules_the_test_only_a_hundredfold_off():
    assert CalibrationSettings().daq_rule == "guarded"
    assert daq_kind("guarded", "log2", 5e-5, 1e-5) == "log2"  # 5x worse: the test's choice stands
    assert daq_kind("guarded", "log2", 2e-3, 1e-5) == "uniform"  # 200x worse: overruled
    assert daq_kind("guarded", "uniform", 5e-5, 1e-2) == "log2"  # and the other way round
    assert daq_kind("power_law", "log2", 2e-3, 1e-5) == "log2" and daq_kind("error", "log2", 5e-5, 1e-5) == "uniform"
    with pytest.raises(ConfigError) as err:
        CalibrationSettings(daq_rule="best")
    assert err.value.field == "daq_rule"
