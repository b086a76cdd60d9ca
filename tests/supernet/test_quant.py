"""Quantizers: integer codes, exact fake quantization, symmetric/asymmetric, min-max vs MSE, log2."""

from __future__ import annotations

import pytest
import torch

from supernet.quant import Log2Params, Log2Quantizer, UniformParams, UniformQuantizer, code_range
from supernet.quant.qtensor import QuantizedTensor


def _weights(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn((16, 8, 3, 3), generator=gen)
    w[3] *= 10.0  # one channel with a much wider range
    return w


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_uniform_codes_range_dtype_and_exact_fake_quant(symmetric: bool, bits: int):
    w = _weights()
    p = UniformQuantizer(symmetric=symmetric, axis=0).fit(w, bits)
    codes = p.quantize(w)
    qmin, qmax = code_range(bits, symmetric)
    assert codes.dtype == (torch.int8 if symmetric else torch.uint8)
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert p.scale.shape == (16, 1, 1, 1)
    assert torch.equal(p.fake_quantize(w), p.dequantize(codes))
    if symmetric:
        assert torch.all(p.zero_point == 0)
    # error bounded by half a step inside the range (min-max never clips)
    assert torch.all((p.fake_quantize(w) - w).abs() <= p.scale / 2 + 1e-6)


def test_per_tensor_fast_path_matches_codes_bit_for_bit():
    x = torch.randn(4, 8, 5, 5) * 3 + 1
    for symmetric in (True, False):
        p = UniformQuantizer(symmetric=symmetric).fit(x, 6)
        q, s = p.split(x)
        assert isinstance(s, float)
        assert torch.equal(q * s, p.dequantize(p.quantize(x)))
        assert torch.equal(p.fake_quantize(x), p.dequantize(p.quantize(x)))


def test_asymmetric_represents_zero_exactly_and_clips_out_of_range():
    x = torch.rand(1000) * 5 + 1  # all positive: the range is extended to include 0
    p = UniformQuantizer(symmetric=False).fit(x, 4)
    assert float(p.fake_quantize(torch.zeros(3)).abs().max()) == 0.0
    big = p.fake_quantize(torch.tensor([100.0]))
    assert float(big) == pytest.approx(float(x.max()), rel=0.1)


def test_mse_search_beats_minmax_on_outliers_and_per_channel_beats_per_tensor():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=gen)
    x[0] = 40.0
    err = {}
    for method in ("minmax", "mse"):
        p = UniformQuantizer(method=method, grid=40, min_ratio=0.05).fit(x, 4)
        err[method] = float((p.fake_quantize(x) - x).pow(2).mean())
    assert err["mse"] < 0.5 * err["minmax"]
    w = _weights()
    per_channel = UniformQuantizer(axis=0).fit(w, 4)
    per_tensor = UniformQuantizer(axis=None).fit(w, 4)
    assert (per_channel.fake_quantize(w) - w).pow(2).mean() < (per_tensor.fake_quantize(w) - w).pow(2).mean()


def test_more_bits_less_error():
    w = _weights()
    errs = [
        float((UniformQuantizer(axis=0, method="mse").fit(w, b).fake_quantize(w) - w).pow(2).mean())
        for b in (2, 3, 4, 6, 8)
    ]
    assert errs == sorted(errs, reverse=True)


def test_bad_bits_and_settings_refused():
    with pytest.raises(ValueError, match="bit-width 9"):
        UniformQuantizer().fit(torch.randn(10), 9)
    with pytest.raises(ValueError, match="16/32 mean FP"):
        UniformQuantizer().fit(torch.randn(10), 16)
    with pytest.raises(ValueError, match="method"):
        UniformQuantizer(method="percentile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis 0"):
        UniformQuantizer(axis=1)


def test_quantized_tensor_rebuilt_from_codes_is_identical():
    w = _weights()
    p = UniformQuantizer(axis=0, method="mse").fit(w, 5)
    qt = QuantizedTensor.from_float(w, p)
    again = QuantizedTensor(qt.codes.clone(), UniformParams(p.scale.clone(), p.zero_point.clone(), 5, False))
    assert torch.equal(qt.dequantize(), again.dequantize())
    with pytest.raises(ValueError, match="codes are"):
        QuantizedTensor(qt.codes.to(torch.int8), p)


def test_log2_levels_are_powers_of_two_and_zero_is_a_code():
    p = Log2Params(1.0, 4)
    x = torch.tensor([1.0, 0.5, 0.25, 2.0**-13, 2.0**-14, 2.0**-20, 0.0, 0.7])
    codes = p.quantize(x)
    assert codes.tolist()[:7] == [0, 1, 2, 13, 14, 15, 15]  # 15 = zero code for 4 bits (levels 0..14)
    out = p.fake_quantize(x)
    assert out.tolist()[:6] == [1.0, 0.5, 0.25, 2.0**-13, 2.0**-14, 0.0]
    assert float(out[6]) == 0.0
    assert float(out[7]) in (0.5, 1.0)
    assert torch.equal(out, p.dequantize(codes))


def test_log2_fits_softmax_better_than_uniform_at_low_bits():
    gen = torch.Generator().manual_seed(0)
    probs = (torch.randn(64, 64, generator=gen) * 3).softmax(-1)
    log2 = Log2Quantizer().fit(probs, 3)
    uni = UniformQuantizer().fit(probs, 3)
    rel = lambda p: float(((p.fake_quantize(probs) - probs).abs() / (probs + 1e-3)).mean())  # noqa: E731
    assert rel(log2) < rel(uni)
    assert float(Log2Quantizer(method="mse").fit(probs, 3).scale) <= float(probs.max()) + 1e-6
