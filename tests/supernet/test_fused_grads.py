"""The closed-form autograd nodes of reconstruction (LSQ's fake quantizers, AdaRound's soft weight and regulariser)
against the chains of elementary operators they replace: the same values and the same gradients."""

from __future__ import annotations

import pytest
import torch

from supernet.calibration.adaround import AdaRoundWeight
from supernet.calibration.lsq import TimestepActQuant
from supernet.calibration.reference import operator_chains, regulariser_chain, soft_chain, uniform_chain
from supernet.quant import Log2Quantizer, UniformParams, UniformQuantizer


def _chain_uniform(m: TimestepActQuant, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (x.dim() - 1)
    s = (m.scale0[idx] * torch.exp(m.log_mult[idx])).view(shape)
    return uniform_chain(x, s, m.zero[idx].view(shape), m._lo, m._hi)


@pytest.mark.parametrize("symmetric", [False, True])
def test_learned_uniform_quantizer_matches_the_operator_chain(symmetric: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 5)
    zero = 0.0 if symmetric else 7.0
    # steps small enough that both clamp edges are hit
    table = [UniformParams(torch.tensor(0.2 + 0.05 * i), torch.tensor(zero), 4, symmetric) for i in range(3)]
    idx = torch.tensor([0, 1, 2, 2, 1, 0])
    m = TimestepActQuant(table)
    with torch.no_grad():
        m.log_mult.copy_(torch.tensor([0.1, -0.2, 0.3]))
    up = torch.randn_like(x)
    grads = []
    for fn in (m, lambda a, i: _chain_uniform(m, a, i)):
        xi = x.clone().requires_grad_()
        m.log_mult.grad = None
        out = fn(xi, idx)
        (out * up).sum().backward()
        grads.append((out.detach(), xi.grad, m.log_mult.grad.clone()))
    (out_f, gx_f, gs_f), (out_c, gx_c, gs_c) = grads
    assert torch.equal(out_f, out_c)
    # The chain's straight-through sum ``v + (round(v) - v)`` can land a hair beyond qmin/qmax when the code sits
    # exactly on the edge, and its clamp then blocks the gradient; the node tests the integer code itself.
    shape = (-1,) + (1,) * (x.dim() - 1)
    code = torch.round(x / (m.scale0[idx] * torch.exp(m.log_mult[idx])).view(shape)) + m.zero[idx].view(shape)
    on_edge = (code == m._lo) | (code == m._hi)
    # (the chain's ``∂/∂x`` is ``up · s / s``, the node's ``up`` itself: equal up to the last bit)
    assert torch.allclose(gx_f[~on_edge], gx_c[~on_edge], rtol=1e-6, atol=0.0)
    assert torch.equal(gx_f[on_edge], up[on_edge])
    assert float((gx_f == 0).float().mean()) > 0.05, "no sample was clamped: the test misses the clamp's gradient"
    assert torch.allclose(gs_f, gs_c, rtol=1e-4, atol=1e-5) or int(on_edge.sum()) > 0


def test_learned_log2_quantizer_passes_gradients_straight_through() -> None:
    torch.manual_seed(1)
    x = torch.rand(4, 8, 8).softmax(-1)
    table = [Log2Quantizer().fit(x, 4)] * 2
    m = TimestepActQuant(table)
    xi = x.clone().requires_grad_()
    idx = torch.tensor([0, 1, 0, 1])
    out = m(xi, idx)
    assert torch.equal(out.detach(), table[0].fake_quantize(x))
    up = torch.randn_like(x)
    (out * up).sum().backward()
    assert torch.equal(xi.grad, up)


@pytest.mark.parametrize("beta", [20.0, 7.5, 2.0])
def test_adaround_soft_weight_and_regulariser_match_the_operator_chain(beta: float) -> None:
    torch.manual_seed(2)
    w = torch.randn(8, 4, 3, 3)
    params = UniformQuantizer(axis=0).fit(w, 4)
    assert isinstance(params, UniformParams)
    a = AdaRoundWeight(w, params)
    with torch.no_grad():  # push some h past the rectifier's clamp at 0 and 1, and some codes past qmin/qmax
        a.v.add_(torch.randn_like(a.v) * 4)
    for fused, chain in (
        (a.soft, lambda: soft_chain(a)),
        (lambda: a.regulariser(beta), lambda: regulariser_chain(a, beta)),
    ):
        results = []
        for fn in (fused, chain):
            a.v.grad = None
            out = fn()
            up = torch.randn_like(out, generator=torch.Generator().manual_seed(3))
            (out * up).sum().backward()
            results.append((out.detach(), a.v.grad.clone()))
        (out_f, g_f), (out_c, g_c) = results
        assert torch.allclose(out_f, out_c, rtol=1e-6, atol=1e-6)
        assert torch.allclose(g_f, g_c, rtol=1e-5, atol=1e-7)
    assert float((a.v.grad == 0).float().mean()) > 0.01, "no element sat on a clamp: the test misses that gradient"


def test_operator_chains_swap_the_nodes_for_the_chains_and_back() -> None:
    torch.manual_seed(4)
    x = torch.rand(2, 4, 4).softmax(-1)
    m = TimestepActQuant([Log2Quantizer().fit(x, 4)])
    x.requires_grad_()
    a = AdaRoundWeight(torch.randn(3, 2), UniformQuantizer(axis=0).fit(torch.randn(3, 2), 4))  # type: ignore[arg-type]
    nodes = (m(x, torch.zeros(2, dtype=torch.long)).grad_fn, a.soft().grad_fn)
    with operator_chains():
        chains = (m(x, torch.zeros(2, dtype=torch.long)).grad_fn, a.soft().grad_fn)
    again = (m(x, torch.zeros(2, dtype=torch.long)).grad_fn, a.soft().grad_fn)
    assert (
        [type(g).__name__ for g in nodes]
        == [type(g).__name__ for g in again]
        == ["_Log2STEBackward", "_SoftWeightBackward"]
    )
    assert all(
        "Backward" in type(g).__name__ and type(g).__name__ != type(n).__name__
        for g, n in zip(chains, nodes, strict=True)
    )
