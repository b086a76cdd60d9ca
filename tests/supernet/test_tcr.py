"""TCR and weight dilation: the factor formulas, exactness of the reparameterized FP model, folded vs explicit
layers, exact undo, and the artifact round trip."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from supernet.calibration import CalibrationSettings
from supernet.calibration.dilation import compute_dilation, dilation_factors
from supernet.calibration.reparam import plan_groups
from supernet.calibration.tcaq import TCAQCalibrator
from supernet.calibration.tcr import tcr_factors
from supernet.errors import CalibrationError
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, random_data
from supernet.zoo.testbed import testbed_unet as make_testbed

#: TCR only (no reconstruction, DAQ or PAR): cheap.
TCR_ONLY = CalibrationSettings(
    grid_steps=3, samples=4, mse_grid=8, act_max_elems=4096, reconstruction=False, daq=False, par=False, recon_samples=4
)


def _out(model: torch.nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x, t).sample


def test_tcr_factor_formula_and_clamp():
    m = torch.tensor(
        [
            [1.0, 2.0, 4.0],  # t0: s = 1 → r = 1, 2, 4
            [2.0, 2.0, 8.0],
        ]
    )  # t1: s = 2 → r = 1, 1, 4
    # r_j = Σ_t r_tj m_tj / Σ_t m_tj
    expected = torch.tensor([1.0, (2 * 2 + 1 * 2) / 4, 4.0])
    assert torch.allclose(tcr_factors(m), expected)
    assert torch.allclose(tcr_factors(m, max_factor=3.0), torch.tensor([1.0, 1.5, 3.0]))
    dead = torch.tensor([[0.0, 1.0, 1000.0], [0.0, 1.0, 1000.0]])
    r = tcr_factors(dead)
    assert r[0] == 1.0 and r[1] == 100.0 and r[2] == 100.0  # dead channel → 1; the rest clamped to [1, 100]
    # Migration strength: r^α before the clamp (α = 0: no reparameterization).
    assert torch.allclose(tcr_factors(m, alpha=0.5), expected.sqrt())
    assert torch.allclose(tcr_factors(m, max_factor=1.9, alpha=0.5), torch.tensor([1.0, 1.5**0.5, 1.9]))
    assert torch.equal(tcr_factors(m, alpha=0.0), torch.ones(3))


def test_dilation_keeps_every_output_channel_in_its_range():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)
    w[:, 2] *= 0.01  # a column of small weights can be dilated a lot
    s = dilation_factors(w)
    assert bool((s >= 1).all()) and float(s[2]) > 10 * float(s[0])
    dilated = w * s.view(1, -1, 1, 1)
    for i in range(6):
        assert float(dilated[i].max()) <= float(w[i].max()) * (1 + 1e-6)
        assert float(dilated[i].min()) >= float(w[i].min()) * (1 + 1e-6)
    # the largest such factor: some weight of every column touches its output channel's bound
    touching = ((dilated - w.amax(dim=(1, 2, 3), keepdim=True)).abs() < 1e-5) | (
        (dilated - w.amin(dim=(1, 2, 3), keepdim=True)).abs() < 1e-5
    )
    assert bool(touching.any(dim=(0, 2, 3))[s < 100].all())


@pytest.fixture(scope="module")
def reparameterized():
    """A random-weight testbed whose FP weights carry TCR x dilation factors, and an untouched copy."""
    pristine = make_testbed(0).eval()
    settings = dataclasses.replace(TCR_ONLY, dilation=True)
    sn = QuantSupernet.build(copy.deepcopy(pristine), (4,), calib_settings=settings)
    data = random_data(TESTBED_SHAPE, grid=(999, 500, 0), n=4)
    sn._ctx.set_grid(data.timesteps)
    TCAQCalibrator(settings).prepare(sn, data)
    return sn, pristine


def test_reparameterized_fp_model_equals_the_original(reparameterized):
    sn, pristine = reparameterized
    rep = sn.reparam
    assert rep is not None
    changed = [s for s, r in rep.factors.items() if not torch.allclose(r, torch.ones_like(r))]
    assert len(changed) > 40  # the test means something: most layers were rescaled
    assert float(max(r.max() for r in rep.factors.values())) > 2.0
    assert not torch.equal(sn.site("mid_block.resnets.0.conv1").weight, pristine.mid_block.resnets[0].conv1.weight)
    x = torch.randn(3, *TESTBED_SHAPE)
    for t in (999, 400, 0):
        ref, out = _out(pristine, x, t), _out(sn.denoiser, x, t)
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5), float((out - ref).abs().max())


def test_folded_and_explicit_layers_are_reported(reparameterized):
    sn, _ = reparameterized
    report = sn.reparam.report()
    attn = "mid_block.attentions.0"
    for p in ("to_q", "to_k", "to_v"):
        assert report["folded"][f"{attn}.{p}"] == f"{attn}.group_norm"
    assert report["folded"][f"{attn}.to_out.0"] == f"{attn}.to_v"
    for name in (
        "mid_block.resnets.0.conv1",
        "down_blocks.0.resnets.0.conv2",
        "time_embedding.linear_2",
        "conv_out",
        "up_blocks.0.resnets.0.conv_shortcut",
    ):
        assert name in report["explicit"]
    assert "conv_in" in report["identity"]  # one input channel: r = 1, nothing to apply
    assert set(report["folded"]) | set(report["explicit"]) | set(report["identity"]) == {
        n for n in sn.sites if not n.endswith((".qk", ".pv"))
    }
    groups = plan_groups(sn.denoiser, {n: sn.site(n) for n in sn.sites})
    qkv = next(g for g in groups if g.kind == "norm" and g.sites[0].startswith(attn))
    assert all(torch.equal(sn.reparam.factors[s], sn.reparam.factors[qkv.sites[0]]) for s in qkv.sites)


def test_undo_restores_the_weights_bit_for_bit():
    pristine = make_testbed(1).eval()
    sn = QuantSupernet.build(copy.deepcopy(pristine), (4,), calib_settings=TCR_ONLY)
    data = random_data(TESTBED_SHAPE, grid=(999, 0), n=2)
    TCAQCalibrator(TCR_ONLY).prepare(sn, data)
    sn.detach()
    for (name, a), (_, b) in zip(sn.denoiser.state_dict().items(), pristine.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CalibrationError, match="positive factors"):
        sn2 = QuantSupernet.build(make_testbed(1).eval(), (4,))
        sn2.reparameterize({"conv_out": torch.ones(3)})


def test_dilation_composes_with_tcr_and_respects_groups(reparameterized):
    sn, _ = reparameterized
    sites = {n: sn.site(n) for n in sn.sites}
    groups = plan_groups(sn.denoiser, sites)
    prior = {n: torch.full((sites[n].weight.shape[1],), 2.0) for g in groups for n in g.sites}
    combined = compute_dilation(sites, groups, prior)
    for g in groups:
        first = combined[g.sites[0]]
        assert bool((first >= 2.0).all())
        assert all(torch.equal(combined[s], first) for s in g.sites)


def test_calibrated_tcr_supernet_round_trips_through_an_artifact(tmp_path):
    model = make_testbed(2).eval()
    sn = QuantSupernet.build(model, (4,), calib_settings=TCR_ONLY)
    data = random_data(TESTBED_SHAPE, grid=(999, 500, 0), n=4)
    sn.calibrate(data)
    meta = sn.calibration_metadata
    assert meta["reparameterization"]["explicit"] and meta["reparameterization"]["folded"]
    assert meta["switches"]["tcr"] and not meta["switches"]["reconstruction"]
    path = sn.save(tmp_path / "tcr")
    loaded = QuantSupernet.load(path, make_testbed(2).eval())
    assert loaded.reparam is not None and loaded.reparam.report() == sn.reparam.report()
    assert loaded.calibration_metadata == meta
    x = torch.randn(2, *TESTBED_SHAPE)
    cand = sn.uniform(4, 4, (500,))
    with sn.assembled(cand), loaded.assembled(cand):
        assert torch.equal(_out(sn.denoiser, x, 500), _out(loaded.denoiser, x, 500))
    # re-calibrating starts from the original weights, not from reparameterized ones
    before = {n: r.clone() for n, r in sn.reparam.factors.items()}
    sn.calibrate(data)
    assert all(torch.equal(before[n], r) for n, r in sn.reparam.factors.items())
