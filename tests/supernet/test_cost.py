"""BitOps and weight bytes from one traced forward, against hand counts."""

from __future__ import annotations

import pytest

from search.candidate import Candidate
from search.cost import CostModel
from supernet.supernet import QuantSupernet
from supernet.testing import TOY_SHAPE, toy_net
from supernet.zoo.testbed import testbed_unet as make_testbed

CONV_MACS = 8 * 8 * 4 * (1 * 3 * 3)  # output pixels x out channels x (in channels x kernel)
FC_MACS = 10 * 256


def test_toy_bitops_and_bytes_equal_a_hand_count():
    sn = QuantSupernet.build(toy_net(), (4, 8), sample_shape=TOY_SHAPE)
    assert isinstance(sn.cost_model, CostModel)
    assert dict(sn.cost_model.macs) == {"conv": CONV_MACS, "fc": FC_MACS}
    assert dict(sn.cost_model.params) == {"conv": 4 * 9, "fc": 2560}
    assert sn.cost_model.fp_params == 4 + 10  # the biases stay 32-bit
    cand = Candidate.from_maps((900, 500, 100), {"conv": 8, "fc": 4}, {"conv": 4, "fc": 8})
    cost = sn.cost(cand)
    assert cost.bitops == 3 * (CONV_MACS * 8 * 4 + FC_MACS * 4 * 8)
    assert cost.bitops_per_forward == CONV_MACS * 32 + FC_MACS * 32
    assert cost.weight_bytes == (36 * 8 + 2560 * 4) / 8 + 14 * 4
    fp = sn.cost(Candidate.from_maps((1,), {"conv": 32, "fc": 32}, {"conv": 32, "fc": 32}))
    assert fp.bitops == (CONV_MACS + FC_MACS) * 32 * 32


def test_testbed_macs_include_attention_matmuls():
    sn = QuantSupernet.build(make_testbed(0), (4, 8))
    macs = sn.cost_model.macs
    # AttnDownBlock at 8x8 (64 tokens), 64 channels: (HW)^2 * C for each matmul
    assert macs["down_blocks.1.attentions.0.qk"] == 64 * 64 * 64
    assert macs["down_blocks.1.attentions.0.pv"] == 64 * 64 * 64
    assert macs["mid_block.attentions.0.qk"] == 16 * 16 * 64  # 4x4 tokens in the mid block
    assert macs["conv_in"] == 16 * 16 * 32 * 9
    assert macs["time_embedding.linear_1"] == 128 * 32
    assert macs["down_blocks.1.resnets.0.conv_shortcut"] == 8 * 8 * 64 * 32
    total_params = sum(p.numel() for p in sn.denoiser.parameters())
    assert sum(sn.cost_model.params.values()) + sn.cost_model.fp_params == total_params == 1_112_801
    w8a8 = sn.cost(sn.uniform(8, 8, (999, 500)))
    assert w8a8.bitops == pytest.approx(2 * 64 * sum(macs.values()))
    assert sn.cost(sn.uniform(4, 4, (999, 500))).bitops == pytest.approx(w8a8.bitops / 4)
