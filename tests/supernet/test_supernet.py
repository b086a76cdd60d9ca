"""The supernet contract: assemble is exact, O(sites), idempotent, reversible and validated; forward is pure."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from search.candidate import Candidate
from search.errors import InvalidCandidate
from supernet.errors import CalibrationError
from supernet.qlayers import QuantWeightLayer
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, TOY_SHAPE, calibrated_toy, params_key, random_data, toy_net
from supernet.zoo.testbed import testbed_unet as make_testbed

TS = (900, 450, 10)


@pytest.fixture(scope="module")
def testbed() -> tuple[QuantSupernet, torch.nn.Module]:
    """A calibrated testbed supernet (W4/W8) and an untouched copy of the FP model. Tests restore FP."""
    pristine = make_testbed(0).eval()
    sn = QuantSupernet.build(copy.deepcopy(pristine), (4, 8), calib_settings=TINY_CALIB)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 500, 0)))
    return sn, pristine


def _run(model: torch.nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(x, t)
    return getattr(out, "sample", out)


def _state_snapshot(sn: QuantSupernet) -> list:
    snap = [sn.state(), sn.grid]
    for name in sn.sites:
        site = sn.site(name)
        if isinstance(site, QuantWeightLayer):
            snap.append({b: (id(s), s.codes.clone(), s.dequantize()) for b, s in site.slots.items()})
        for q in site.act_quantizers():
            snap.append({b: tuple((id(p), params_key(p)) for p in table) for b, table in q.tables.items()})
    return snap


def test_fp_bits_equal_the_original_model_exactly(testbed):
    sn, pristine = testbed
    x = torch.randn(3, *TESTBED_SHAPE)
    for bits in (16, 32):
        with sn.assembled(sn.uniform(bits, bits, TS)):
            assert torch.equal(_run(sn.denoiser, x, 450), _run(pristine, x, 450))
    # FP weights with quantized activations are not FP (the genes are independent)
    with sn.assembled(sn.uniform(32, 8, TS)):
        assert not torch.equal(_run(sn.denoiser, x, 450), _run(pristine, x, 450))


def test_uniform_assembly_equals_direct_per_config_quantization(testbed):
    """Assembling W8A8 from the 2-option supernet == quantizing a fresh copy directly at W8A8 only."""
    sn, pristine = testbed
    direct = QuantSupernet.build(copy.deepcopy(pristine), (8,), calib_settings=TINY_CALIB)
    direct.calibrate_config(direct.uniform(8, 8, TS), random_data(TESTBED_SHAPE, grid=(999, 500, 0)))
    x = torch.randn(3, *TESTBED_SHAPE)
    for t in (999, 620, 3):  # nearest grid timestep: 999, 500, 0
        with sn.assembled(sn.uniform(8, 8, TS)):
            mine = _run(sn.denoiser, x, t)
        assert torch.equal(mine, _run(direct.denoiser, x, t))
        assert not torch.equal(mine, _run(pristine, x, t))


def test_assemble_is_idempotent_reversible_and_mixes(testbed):
    sn, _ = testbed
    x = torch.randn(2, *TESTBED_SHAPE)
    rng = random.Random(0)
    mixed = sn.random_candidate(rng, TS)
    sn.assemble(mixed)
    first = _run(sn.denoiser, x, 450)
    state = sn.state()
    sn.assemble(mixed)
    assert sn.state() == state and torch.equal(_run(sn.denoiser, x, 450), first)
    with sn.assembled(sn.uniform(4, 4, TS)):
        low = _run(sn.denoiser, x, 450)
        assert {w for _, w, _ in sn.state()} == {4}
    assert sn.state() == state and torch.equal(_run(sn.denoiser, x, 450), first)
    with sn.assembled(sn.uniform(8, 8, TS)):
        high = _run(sn.denoiser, x, 450)
    assert not torch.equal(first, low) and not torch.equal(first, high)
    sn.assemble(sn.uniform(32, 32, TS))


def test_assemble_changes_only_the_named_site(testbed):
    sn, _ = testbed
    w = dict.fromkeys(sn.sites, 8)
    a = dict.fromkeys(sn.sites, 8)
    w["mid_block.attentions.0.pv"] = 4
    with sn.assembled(Candidate.from_maps(TS, w, a)):
        bits = {n: (wb, ab) for n, wb, ab in sn.state()}
        assert bits["mid_block.attentions.0.pv"] == (4, 8)
        assert sn.site("mid_block.attentions.0.pv").b.bits == 4
        assert {v for k, v in bits.items() if k != "mid_block.attentions.0.pv"} == {(8, 8)}


def test_forward_does_not_mutate_quantizer_state(testbed):
    sn, _ = testbed
    with sn.assembled(sn.random_candidate(random.Random(1), TS)):
        before = _state_snapshot(sn)
        sd = {k: v.clone() for k, v in sn.denoiser.state_dict().items()}
        _run(sn.denoiser, torch.randn(2, *TESTBED_SHAPE), 777)
        after = _state_snapshot(sn)
        assert repr(before) == repr(after)
        assert all(torch.equal(v, sd[k]) for k, v in sn.denoiser.state_dict().items())


def test_only_the_assembled_weights_are_materialised(testbed):
    sn, _ = testbed
    layers = [sn.site(n) for n in sn.sites if isinstance(sn.site(n), QuantWeightLayer)]
    fp_bytes = sum(layer.weight.numel() * 4 for layer in layers)
    assert sn.memory().materialised == 0  # in FP nothing is materialised
    for i in range(5):
        c = sn.random_candidate(random.Random(i), TS)
        sn.assemble(c)
        w = c.w_map()
        for layer in layers:  # exactly the assembled width's values, one float copy per quantized site
            assert torch.equal(layer._w, layer.slots[w[layer.name]].dequantize())
        assert sn.memory().materialised == fp_bytes
    same = [layer._w for layer in layers]
    sn.assemble(c)  # re-assembling the same widths keeps the copies
    assert all(a is layer._w for a, layer in zip(same, layers, strict=True))
    sn.assemble(sn.uniform(32, 32, TS))
    assert sn.memory().materialised == 0 and all(layer._w is None for layer in layers)


def test_slots_hold_codes_packed_where_the_width_allows(testbed):
    sn, _ = testbed  # bit options 4 and 8
    layers = [sn.site(n) for n in sn.sites if isinstance(sn.site(n), QuantWeightLayer)]
    numel = sum(layer.weight.numel() for layer in layers)
    stored = {b: sum(layer.slots[b]._stored.numel() for layer in layers) for b in (4, 8)}
    assert stored[8] == numel
    assert numel / 2 <= stored[4] <= numel / 2 + len(layers)  # two codes a byte, an odd count padded
    mem = sn.memory()
    assert mem.codes <= 1.5 * numel + len(layers) + 16 * sum(layer.weight.shape[0] for layer in layers)


def test_bad_candidates_are_refused_naming_the_problem(testbed):
    sn, _ = testbed
    good = sn.uniform(8, 8, TS)
    state = sn.state()
    w, a = good.w_map(), good.a_map()
    w["no.such.layer"], a["no.such.layer"] = 8, 8
    with pytest.raises(InvalidCandidate, match=r"unknown site 'no\.such\.layer'"):
        sn.assemble(Candidate.from_maps(TS, w, a))
    w, a = good.w_map(), good.a_map()
    del w["conv_in"], a["conv_in"]
    with pytest.raises(InvalidCandidate, match="does not set site 'conv_in'"):
        sn.assemble(Candidate.from_maps(TS, w, a))
    w, a = good.w_map(), good.a_map()
    a["conv_out"] = 6
    with pytest.raises(InvalidCandidate, match=r"'conv_out': activation bit-width 6 is not among"):
        sn.assemble(Candidate.from_maps(TS, w, a))
    with pytest.raises(InvalidCandidate, match="weight bit-width 5"):
        sn.cost(sn.uniform(5, 8, TS))
    assert sn.state() == state


def test_uncalibrated_widths_raise_and_keep_state():
    sn = QuantSupernet.build(toy_net(), (4, 8), sample_shape=TOY_SHAPE)
    before = sn.state()
    with pytest.raises(CalibrationError, match="no weights quantized to 8 bits"):
        sn.assemble(sn.uniform(8, 8))
    assert sn.state() == before
    sn.assemble(sn.uniform(16, 32))  # FP needs no calibration


def test_activation_parameters_follow_the_timestep(testbed):
    sn, _ = testbed
    x = torch.randn(2, *TESTBED_SHAPE)
    q = sn.site("conv_in").act
    seen = []
    handle = sn.site("conv_in").register_forward_pre_hook(lambda _m, _i: seen.append(q.params()))
    try:
        with sn.assembled(sn.uniform(8, 4, TS)):
            for t in (990, 999, 760, 600, 500, 3, 0):
                _run(sn.denoiser, x, t)
    finally:
        handle.remove()
    table = q.tables[4]
    assert len({float(p.scale) for p in table}) == 3  # different ranges per grid timestep
    assert [table.index(p) for p in seen] == [0, 0, 0, 1, 1, 2, 2]  # nearest of (999, 500, 0)
    with sn.assembled(sn.uniform(8, 4, TS)), pytest.raises(CalibrationError, match="no timestep selected"):
        sn.denoiser(x, torch.tensor([1, 2]))


def test_calibrated_toy_mixed_candidate_and_calibration_replaced():
    sn = calibrated_toy()
    x = torch.randn(4, *TOY_SHAPE)
    cand = Candidate.from_maps((5,), {"conv": 4, "fc": 8}, {"conv": 8, "fc": 4})
    sn.assemble(cand)
    y = _run(sn.denoiser, x, 100)
    conv_slot = sn.site("conv").slots[4]
    sn.calibrate(random_data(TOY_SHAPE, grid=(800, 50), n=8, seed=5))
    assert sn.grid == (800, 50) and sn.state() == tuple((n, 32, 32) for n in sn.sites)
    assert sn.site("conv").slots[4] is not conv_slot
    sn.assemble(cand)
    assert not torch.equal(_run(sn.denoiser, x, 100), y)  # new activation ranges, no stale scales


def test_chunked_quantized_attention_equals_whole(testbed, monkeypatch):
    import supernet.qlayers.attention as attention

    sn, _ = testbed
    x = torch.randn(3, *TESTBED_SHAPE)
    with sn.assembled(sn.random_candidate(random.Random(11), TS)):
        chunked = _run(sn.denoiser, x, 450)
        monkeypatch.setattr(attention, "SCORE_CHUNK_ELEMS", 1 << 40)
        whole = _run(sn.denoiser, x, 450)
        monkeypatch.setattr(attention, "SCORE_CHUNK_ELEMS", 1)  # one head per chunk
        single = _run(sn.denoiser, x, 450)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(single, whole, rtol=1e-6, atol=1e-6)
