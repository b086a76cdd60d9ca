"""Quantized layers: the registry, site names, the timestep context and our attention processor."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from supernet.qlayers import QConv2d, QLinear, QMatMul, TimestepContext, install_sites, timestep_of
from supernet.quant import UniformQuantizer
from supernet.supernet import QuantSupernet
from supernet.testing import TOY_SHAPE, toy_net
from supernet.zoo.testbed import testbed_unet as make_testbed


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.up = nn.ConvTranspose2d(2, 2, 2, stride=2)  # no wrapper registered
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 16 * 16, 3))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.head(self.up(self.conv(x)))


def test_registry_wraps_conv_linear_and_lists_unsupported_layers():
    model = Mixed().eval()
    x = torch.randn(2, *TOY_SHAPE)
    ref = model(x, 0)
    sn = QuantSupernet.build(model, (8,), sample_shape=TOY_SHAPE)
    assert sn.sites == ("conv", "head.1")
    assert isinstance(model.conv, QConv2d) and isinstance(model.head[1], QLinear)
    assert sn.skipped == {"up": "unsupported layer type ConvTranspose2d"}
    assert model.conv.weight is sn.site("conv").weight  # shared, not copied
    assert torch.equal(model(x, 0), ref)
    sn.detach()
    assert type(model.conv) is nn.Conv2d and type(model.head[1]) is nn.Linear


def test_excluded_modules_stay_fp_and_are_listed():
    from supernet.settings import SupernetSettings

    sn = QuantSupernet.build(toy_net(), (8,), SupernetSettings(exclude=("fc",)), sample_shape=TOY_SHAPE)
    assert sn.sites == ("conv",)
    assert sn.skipped == {"fc": "excluded by settings"}


def test_building_twice_on_one_model_is_refused():
    from supernet.errors import CalibrationError

    model = toy_net()
    QuantSupernet.build(model, (8,), sample_shape=TOY_SHAPE)
    with pytest.raises(CalibrationError, match="already wrapped"):
        QuantSupernet.build(model, (8,), sample_shape=TOY_SHAPE)


def test_testbed_sites_are_deterministic_and_include_attention_matmuls():
    a = QuantSupernet.build(make_testbed(0), (8,))
    b = QuantSupernet.build(make_testbed(1), (8,))
    assert a.sites == b.sites == tuple(sorted(a.sites))
    assert len(a.sites) == 35 + 29 + 8 and not a.skipped
    matmuls = [s for s in a.sites if s.endswith((".qk", ".pv"))]
    assert matmuls[:2] == ["down_blocks.1.attentions.0.pv", "down_blocks.1.attentions.0.qk"]
    assert isinstance(a.site("mid_block.attentions.0.qk"), QMatMul)
    assert a.site_blocks["conv_in"] == "conv_in"
    assert a.site_blocks["time_embedding.linear_1"] == "time_embedding"
    assert a.site_blocks["down_blocks.1.attentions.0.qk"] == "down_blocks.1"
    assert a.site_blocks["mid_block.resnets.1.conv2"] == "mid_block"
    assert a.site_blocks["up_blocks.2.resnets.1.conv_shortcut"] == "up_blocks.2"
    assert set(a.site_blocks.values()) == {
        "conv_in",
        "time_embedding",
        "down_blocks.0",
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2",
        "conv_out",
    }


def test_explicit_attention_path_matches_diffusers_sdpa_in_float():
    """Observers that pass through force the explicit softmax path without quantizing anything."""
    ref = make_testbed(0).eval()
    model = copy.deepcopy(ref)
    sn = QuantSupernet.build(model, (8,))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        expected = ref(x, 300).sample
        for name in sn.sites:
            for q in sn.site(name).act_quantizers():
                q.set_observer(lambda _q, _x: None)
        assert not sn.site("mid_block.attentions.0.qk").passthrough
        got = model(x, 300).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_wrapped_layers_equal_textbook_fake_quantization():
    """conv(q·s, ŵ) with the scale folded into the weight equals conv(fake_quant(x), dequant(codes))."""
    model = toy_net()
    sn = QuantSupernet.build(model, (4,), sample_shape=TOY_SHAPE)
    conv = sn.site("conv")
    x = torch.randn(3, *TOY_SHAPE)
    wp = UniformQuantizer(axis=0).fit(conv.weight, 4)
    from supernet.quant.qtensor import QuantizedTensor

    conv.slots[4] = QuantizedTensor.from_float(conv.weight, wp)
    ap = UniformQuantizer().fit(x, 4)
    conv.act.tables[4] = (ap,)
    sn._ctx.set_grid([0])
    conv.activate(4, 4)
    sn._ctx.select(0)
    with torch.no_grad():
        got = conv(x)
        codes = torch.clamp(torch.round(x / ap.scale) + ap.zero_point, 0, 15)
        x_hat = (codes - ap.zero_point) * ap.scale
        w_hat = (wp.quantize(conv.weight).float() - wp.zero_point) * wp.scale
        expected = nn.functional.conv2d(x_hat, w_hat, conv.bias, padding=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, nn.functional.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-3)


def test_timestep_context_nearest_and_capture():
    ctx = TimestepContext()
    ctx.set_grid([999, 500, 0])
    assert [ctx.nearest(t) for t in (1200, 999, 760, 749, 500, 250, 251, 0)] == [0, 0, 0, 1, 1, 2, 1, 2]
    assert timestep_of((None, 7), {}) == 7
    assert timestep_of((None,), {"timestep": torch.tensor([5, 5])}) == 5
    assert timestep_of((None, torch.tensor([1, 2])), {}) is None  # per-sample timesteps: ambiguous
    assert timestep_of((None,), {}) is None
    with pytest.raises(ValueError, match="repeated"):
        ctx.set_grid([1, 1])


def test_install_sites_without_attention_matmuls():
    model = make_testbed(0)
    found = install_sites(model, TimestepContext(), attention=False)
    assert not [s for s in found.sites if s.endswith((".qk", ".pv"))]
    assert len(found.sites) == 64
    found.uninstall()
    assert not any(isinstance(m, QConv2d | QLinear) for m in model.modules())


def test_failed_build_leaves_the_model_untouched():
    from supernet.errors import CalibrationError

    model = toy_net()
    with pytest.raises(RuntimeError):
        QuantSupernet.build(model, (8,), sample_shape=(3, 8, 8))  # the conv expects one channel
    assert type(model.conv) is nn.Conv2d and type(model.fc) is nn.Linear
    assert not model._forward_pre_hooks and not model._forward_hooks
    with pytest.raises(CalibrationError, match="no quantizable layer"):
        QuantSupernet.build(nn.Sequential(nn.SiLU()), (8,), sample_shape=(1,))


def test_bit_options_are_validated():
    from search.errors import ConfigError

    for bad in ((), (8, 16), (1,)):
        with pytest.raises(ConfigError, match="bit_options"):
            QuantSupernet.build(toy_net(), bad, sample_shape=TOY_SHAPE)
