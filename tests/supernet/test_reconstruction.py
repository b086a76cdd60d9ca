"""Block reconstruction: AdaRound and learned step sizes as units, the differentiable attention path, and
reconstruction lowering the error of a calibrated configuration."""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import torch

from supernet.calibration import CalibrationSettings
from supernet.calibration.adaround import AdaRoundWeight, beta_at
from supernet.calibration.lsq import TimestepActQuant
from supernet.calibration.reconstruction import _attend_autograd
from supernet.qlayers import QuantAttnProcessor
from supernet.quant import Log2Params, Log2Quantizer, UniformParams, UniformQuantizer
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import testbed_unet as make_testbed

#: Reconstruction alone (no TCR/DAQ/PAR), enough steps to matter on the toy net.
RECON_ONLY = CalibrationSettings(
    grid_steps=3,
    samples=16,
    mse_grid=12,
    act_max_elems=4096,
    tcr=False,
    daq=False,
    par=False,
    recon_iters=150,
    recon_samples=16,
    recon_batch=16,
    recon_epochs=1000.0,
    weight_method="minmax",
    act_method="minmax",
)


def test_adaround_starts_at_the_fp_weight_and_hardens_to_valid_codes():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    params = UniformQuantizer(axis=0).fit(w, 4)
    ada = AdaRoundWeight(w, params)
    gap = (ada.soft().detach() - w).abs()  # the FP weight, up to the zero-point rounding at the range ends
    assert float(gap.max()) <= 0.5 * float(params.scale.max()) and float(gap.median()) < 1e-4
    hard = ada.harden()
    assert hard.codes.dtype == params.code_dtype and int(hard.codes.min()) >= 0 and int(hard.codes.max()) <= 15
    # the initial hard decision is round-to-nearest
    assert torch.equal(hard.codes, params.quantize(w))
    ada.v.data = torch.where(ada.v > 0, 10.0, -10.0)  # saturated: h in {0, 1}
    assert float(ada.regulariser(2.0).detach()) == pytest.approx(0.0, abs=1e-4)
    warm = AdaRoundWeight(w, params, previous=1.0 - ada.rounding())  # the opposite decisions, warm-started
    assert torch.equal(warm.rounding(), 1.0 - ada.rounding())
    h = warm.h().detach()
    assert float(h.min()) > 0.05 and float(h.max()) < 0.95


def test_beta_is_off_during_warmup_then_anneals_from_20_to_2():
    assert beta_at(0, 100, 0.2) is None and beta_at(19, 100, 0.2) is None
    assert beta_at(20, 100, 0.2) == pytest.approx(20.0)
    assert beta_at(99, 100, 0.2) == pytest.approx(2.0, abs=0.3)


def test_learned_steps_match_the_fitted_quantizers_per_sample_timestep():
    torch.manual_seed(1)
    x = torch.randn(6, 3, 4, 4).abs() / 3
    uni = [UniformQuantizer().fit(x * (i + 1), 4) for i in range(3)]
    log2 = Log2Quantizer().fit(x.clamp(0, 1), 4)
    table = [uni[0], log2, uni[2]]
    m = TimestepActQuant(table)
    idx = torch.tensor([0, 1, 2, 0, 1, 2])
    out = m(x, idx)
    for i in range(6):
        assert torch.allclose(out[i], table[int(idx[i])].fake_quantize(x[i : i + 1])[0], atol=1e-6)
    heads = m(x.repeat_interleave(2, dim=0), idx)  # batch·heads, batch-major
    assert torch.allclose(heads[::2], out) and torch.allclose(heads[1::2], out)
    out.sum().backward()
    assert m.log_mult.grad is not None and float(m.log_mult.grad[1]) == 0.0 and float(m.log_mult.grad.abs().sum()) > 0
    with torch.no_grad():
        m.log_mult[0] = 0.5
    back = m.table()
    assert isinstance(back[1], Log2Params) and back[1].scale == log2.scale
    assert isinstance(back[0], UniformParams) and float(back[0].scale) == pytest.approx(
        float(uni[0].scale) * 1.6487, rel=1e-4
    )


def test_differentiable_attention_equals_the_fast_path():
    sn = QuantSupernet.build(make_testbed(0).eval(), (4,), calib_settings=TINY_CALIB)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 0), n=2))
    x = torch.randn(3, *TESTBED_SHAPE)
    procs = [
        m.processor for m in sn.denoiser.modules() if isinstance(getattr(m, "processor", None), QuantAttnProcessor)
    ]
    with sn.assembled(sn.uniform(4, 4, (999,))), torch.no_grad():
        fast = sn.denoiser(x, 999).sample
        for p in procs:
            p._attend = types.MethodType(_attend_autograd, p)
        try:
            slow = sn.denoiser(x, 999).sample
        finally:
            for p in procs:
                del p._attend
    assert torch.allclose(fast, slow, atol=1e-4)


def _rel_error(sn: QuantSupernet, ref: torch.nn.Module, x: torch.Tensor, bits: int) -> float:
    err = 0.0
    with sn.assembled(sn.uniform(bits, bits, (500,))), torch.no_grad():
        for t in (900, 500, 100):
            y, r = sn.denoiser(x, t), ref(x, t)
            err += float((y - r).square().mean() / r.square().mean())
    return err


def test_reconstruction_lowers_the_error_of_a_toy_net():
    data = random_data(TOY_SHAPE, n=16)
    held_out = torch.randn(32, *TOY_SHAPE, generator=torch.Generator().manual_seed(9))
    ref = toy_net()
    errors = {}
    for name, settings in (("range", dataclasses.replace(RECON_ONLY, strategy="range")), ("recon", RECON_ONLY)):
        sn = QuantSupernet.build(toy_net(), (3,), calib_settings=settings, sample_shape=TOY_SHAPE)
        sn.calibrate(data)
        errors[name] = _rel_error(sn, ref, held_out, 3)
        if name == "recon":
            report = sn.calibration_metadata["reconstruction"]["W3A3"]["round_1"]
            assert list(report) == ["conv", "fc"]  # forward order
            for block in report.values():
                assert block["steps"] == 150 and block["loss_after"] < block["loss_before"] and not block["reverted"]
            assert set(sn.site("fc").slots) == {3}
    assert errors["recon"] < 0.8 * errors["range"], errors


def test_testbed_reconstruction_with_attention_and_the_temporal_block():
    """Wiring on the full architecture: attention blocks train, TIB runs first (all its iterations: its pool is
    complete, so the epoch cap does not apply to it), the result assembles."""
    settings = dataclasses.replace(
        RECON_ONLY, recon_iters=3, tib=True, samples=2, recon_samples=2, recon_batch=4, recon_epochs=1.0
    )
    pristine = make_testbed(0).eval()
    sn = QuantSupernet.build(copy.deepcopy(pristine), (4,), calib_settings=settings)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 0), n=2))
    report = sn.calibration_metadata["reconstruction"]["W4A4"]["round_1"]
    assert next(iter(report)) == "temporal"
    assert "time_embedding" not in report  # trained inside the temporal block
    assert {"down_blocks.1", "mid_block", "up_blocks.1", "conv_out"} <= set(report)
    assert report["temporal"]["steps"] == 3
    assert all(b["steps"] == 1 for name, b in report.items() if name != "temporal")  # ceil(1 epoch · 4 / 4)
    x = torch.randn(2, *TESTBED_SHAPE)
    with sn.assembled(sn.uniform(4, 4, (999,))), torch.no_grad():
        assert torch.isfinite(sn.denoiser(x, 999).sample).all()


def test_block_inputs_are_captured_before_a_sites_own_pre_scale():
    """A block that is itself an explicitly pre-scaled site (TCR) must see its input once, not scaled twice."""
    from supernet.calibration import CalibrationSession
    from supernet.calibration.reconstruction import BlockReconstructor
    from supernet.calibration.tcaq import TCAQCalibrator

    settings = dataclasses.replace(RECON_ONLY, tcr=True)
    sn = QuantSupernet.build(toy_net(), (4,), calib_settings=settings, sample_shape=TOY_SHAPE)
    data = random_data(TOY_SHAPE, n=4)
    sn._ctx.set_grid(data.timesteps)
    TCAQCalibrator(settings).prepare(sn, data)
    assert "fc" in sn.reparam.explicit
    bits = dict.fromkeys(sn.sites, 4)
    session = CalibrationSession(
        sn.model, {n: sn.site(n) for n in sn.sites}, sn._ctx, data, settings, sn.settings, bits, bits
    )
    recon = BlockReconstructor(session)
    with recon.full_precision():
        pool = recon._capture_inputs(sn.site("fc"), data)
        fc_in = pool.take(torch.arange(len(pool)))[0][0]
        with torch.no_grad():
            out = sn.site("fc")(fc_in)
            ref = torch.cat([toy_net()(x, t) for _, t, x in data.items()])
    assert torch.allclose(out, ref, atol=1e-5)
