"""The cpu-int8 backend: every eligible conv/linear site of an export computes on oneDNN's int8 kernels with the
same codes as the reference (fake-quant) computation, layer by layer, and the whole denoiser stays close to it, eager
and compiled (one compiled graph for every timestep)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.models import TESTBED_DIR, load_model
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.log2 import Log2Params
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformQuantizer
from supernet.runtime import cpu_int8_unavailable, install_cpu_int8
from supernet.runtime.cpu_int8 import _symmetric_int8, int8_pairs_saturate, kernel_of, saturates
from supernet.runtime.fused import softmax_log2, softmax_uniform
from supernet.sampling import uniform_schedule
from tests.torch_threads import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.skipif(cpu_int8_unavailable() is not None, reason=str(cpu_int8_unavailable()))

SCHEDULE = uniform_schedule(10, 1000)
SATURATING = "reference: its int8 products would saturate (a CPU without VNNI)"


def _int8(layer: QuantWeightLayer) -> bool:
    """The site computes on an int8 kernel (not on float products of its codes)."""
    kernel = kernel_of(layer)
    return kernel is not None and kernel.packed is not None


#: The compiled tests run uniform W8A6 (int8 with the offset term on every CPU) at this batch: the graph of the latency
#: table's anchor on a CPU without VNNI (``test_runtime_latency.py``), which Inductor's cache then serves there.
COMPILED_BATCH = 16


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    model = load_model(TESTBED_DIR)
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    sn = load_supernet(shipped, model)
    root = tmp_path_factory.mktemp("exports")
    fp_first = sn.uniform(6, 6, SCHEDULE).w_map(), sn.uniform(6, 6, SCHEDULE).a_map()
    fp_first[1]["conv_in"] = 32  # the first layer's input stays in FP: that site must stay on the reference path
    from search.candidate import Candidate

    candidates = {
        "w6a6": sn.uniform(6, 6, SCHEDULE),
        "w8a8": sn.uniform(8, 8, SCHEDULE),
        "w8a6": sn.uniform(8, 6, SCHEDULE),  # the 8-bit offset term, with products no CPU saturates
        "fp-input": Candidate.from_maps(SCHEDULE, *fp_first),
    }
    return {
        name: export_candidate(sn, c, root / name, scheduler_config=model.scheduler_config)
        for name, c in candidates.items()
    }


def test_sites_get_int8_kernels_and_fp_inputs_stay_reference(exports) -> None:
    w6 = install_cpu_int8(load(exports["w6a6"]).denoiser, compile=False)
    assert w6 and set(w6.values()) == {"int8"}  # asymmetric 6-bit codes minus their zero-point fit int8 exactly
    w8 = install_cpu_int8(load(exports["w8a8"]).denoiser, compile=False)
    # 8-bit: codes - 128 plus a per-channel offset term, exactly; on a CPU without VNNI the sites whose products
    # would saturate int16 run as the reference (what saturates depends on each site's largest codes)
    assert w8 and set(w8.values()) <= {"int8", SATURATING}
    assert (SATURATING in w8.values()) == int8_pairs_saturate()
    mixed = install_cpu_int8(load(exports["fp-input"]).denoiser, compile=False)
    assert mixed["conv_in"] == "reference: FP weights or inputs"
    assert sum(v == "int8" for v in mixed.values()) == len(mixed) - 1
    fused = install_cpu_int8(load(exports["w8a8"]).denoiser, compile=True)  # compiles on the first call only
    assert sum(v == "fused-softmax" for v in fused.values()) == 4  # the testbed's four attention layers


@pytest.mark.parametrize(("bits", "groups", "how"), [(8, 1, "exact"), (6, 1, "exact"), (8, 2, "requantized")])
def test_asymmetric_weights_become_int8_codes_scale_and_offset(bits: int, groups: int, how: str) -> None:
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0)) + 0.3  # off-centre: asymmetric
    params = UniformQuantizer(symmetric=False, axis=0).fit(w, bits)
    slot = QuantizedTensor.from_float(w, params)
    int8, scale, offset, got = _symmetric_int8(slot, groups)
    assert got == how and int8.dtype == torch.int8
    rebuilt = int8.float() * scale.view(-1, 1, 1, 1) + (0 if offset is None else offset.view(-1, 1, 1, 1))
    error = (rebuilt - slot.dequantize()).abs().max()
    if how == "exact":
        assert error < 1e-6, float(error)
    else:  # one more rounding, at most half of the new step
        assert 0 < error <= 0.51 * float((slot.dequantize().abs().amax((1, 2, 3)) / 127).max())


@pytest.mark.parametrize("name", ["w6a6", "w8a6", "w8a8"])
def test_each_int8_site_computes_what_the_reference_computes_from_the_same_codes(exports, name: str) -> None:
    """Each int8 site's output against the reference export's same site fed the same input (the int8 sites keep no
    float weights to compute a reference with)."""
    fast, ref = load(exports[name]), load(exports[name])
    report = install_cpu_int8(fast.denoiser, compile=False)
    fast_layers = [m for m in fast.denoiser.modules() if isinstance(m, QuantWeightLayer) and _int8(m)]
    if name == "w8a8" and int8_pairs_saturate():  # 8-bit codes up to 255 times weights up to 127: none is exact
        assert not fast_layers and set(report.values()) <= {SATURATING, "fused-softmax"}
        return
    assert fast_layers and all(m.weight.numel() == 0 and not m.slots for m in fast_layers)  # float weights freed
    sites = {m.site for m in fast_layers}
    ref_layers = [m for m in ref.denoiser.modules() if isinstance(m, QuantWeightLayer) and m.site in sites]
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    worst: list[float] = []

    def record(module: QuantWeightLayer, args: tuple, out: torch.Tensor) -> None:
        seen[module.site] = (args[0].clone(), out.clone())  # the input after the site's own pre-scale hook

    def feed(module: QuantWeightLayer, args: tuple) -> tuple:
        return (seen[module.site][0], *args[1:])  # runs after the reference site's pre-scale hook

    def compare(module: QuantWeightLayer, args: tuple, out: torch.Tensor) -> None:
        want = seen[module.site][1]
        worst.append(float((want - out).abs().max() / out.abs().max().clamp_min(1e-6)))

    handles = [m.register_forward_hook(record) for m in fast_layers]
    handles += [m.register_forward_pre_hook(feed) for m in ref_layers]
    handles += [m.register_forward_hook(compare) for m in ref_layers]
    x = torch.randn(4, *fast.model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (900, 500, 0):
            fast.model.predict_noise(x, t)
            ref.model.predict_noise(x, t)
    for h in handles:
        h.remove()
    assert len(ref_layers) == len(fast_layers) and len(worst) == 3 * len(fast_layers)
    assert max(worst) < 1e-4, max(worst)  # float accumulation order only


def test_saturation_is_probed_on_the_kernel_and_bounds_each_site() -> None:
    weight = torch.ops.onednn.qlinear_prepack(torch.full((1, 64), 127, dtype=torch.int8), None)
    x = torch.full((1, 64), 255, dtype=torch.uint8)
    args = (weight, torch.ones(1), torch.zeros(1, dtype=torch.long), None, 1.0, 0, torch.float32, "none", [], "")
    exact = float(torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, *args)) == 64 * 127 * 255
    assert int8_pairs_saturate() is not exact
    assert not saturates(64, 255) and not saturates(127, 128)  # pairs of products within int16
    assert saturates(127, 255) is int8_pairs_saturate()


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10((a.max() - a.min()) ** 2 / ((a - b) ** 2).mean()))


def test_a_whole_step_stays_close_to_the_reference(exports) -> None:
    ref, fast = load(exports["w8a8"]), load(exports["w8a8"])
    install_cpu_int8(fast.denoiser, compile=False)
    x = torch.randn(16, *ref.model.sample_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref.model.predict_noise(x, 500), fast.model.predict_noise(x, 500)
    assert _psnr(a, b) > 40.0, _psnr(a, b)  # measured 52 dB: only accumulation order differs


def test_fused_softmax_quantization_gives_the_reference_codes() -> None:
    scores = torch.randn(16, 64, 64, generator=torch.Generator().manual_seed(2)) * 4
    probs = scores.softmax(dim=-1)
    for bits in (4, 8):
        p = Log2Params(scale=float(probs.max()), bits=bits)
        got = softmax_log2(scores, torch.tensor(p.scale), torch.tensor(float(p.zero_code)))
        want = p.fake_quantize(probs)
        assert (got != want).float().mean() < 1e-5  # only where the float log2 rounds the other way at sqrt(2)
        assert (got - want).abs().max() <= 1e-6 + 0.42 * want.abs().max() * ((got != want).any().float())
    u = UniformQuantizer(symmetric=False).fit(probs, 8)
    inv, lo, hi, s, _ = u._floats
    got = softmax_uniform(scores, *(torch.tensor(v) for v in (inv, lo, hi, s)))
    torch.testing.assert_close(got, u.fake_quantize(probs), rtol=0, atol=1e-7)


def test_compiled_backend_matches_eager_and_compiles_nothing_per_timestep(exports) -> None:
    """The compiled denoiser reads each timestep's parameters from tensors: once every calibrated timestep ran
    (the fused softmax compiles once per quantizer kind and score shape), other timesteps compile nothing."""
    from torch._dynamo.utils import counters

    eager, compiled = load(exports["w8a6"]), load(exports["w8a6"], backend="cpu-int8")
    install_cpu_int8(eager.denoiser, compile=False)
    x = torch.randn(COMPILED_BATCH, *eager.model.sample_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for t in compiled.quant_config["grid"]:
            a, b = eager.model.predict_noise(x, t), compiled.model.predict_noise(x, t)
            assert _psnr(a, b) > 40.0, (t, _psnr(a, b))  # the fused attention rounds values, not codes
        graphs = counters["stats"]["unique_graphs"]
        for t in (999, 555, 1):
            compiled.model.predict_noise(x, t)
    assert graphs and counters["stats"]["unique_graphs"] == graphs


def test_every_export_compiles_its_own_graph_past_dynamos_recompile_limit(exports) -> None:
    """Dynamo runs a code object eagerly once it holds ``recompile_limit`` graphs; every export shares
    ``UNet2DModel.forward``, so (limit 8) a process's ninth export ran eager. Each export now compiles its own."""
    from torch._dynamo.utils import counters

    x = torch.randn(
        COMPILED_BATCH, *load(exports["w8a6"]).model.sample_shape, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        for _ in range(2):
            pipe = load(exports["w8a6"], backend="cpu-int8")
            before = counters["stats"]["unique_graphs"]
            pipe.model.predict_noise(x, 500)
            assert counters["stats"]["unique_graphs"] == before + 1  # compiled, not run eagerly


def test_load_picks_the_backend_and_refuses_what_it_cannot_run(exports) -> None:
    from search.errors import ConfigError

    pipe = load(exports["w6a6"], backend="cpu-int8", compile=False)
    assert pipe.backend == "cpu-int8" and set(pipe.backend_report.values()) == {"int8"}
    images = pipe.sample(4, seed=0)
    assert images.shape[0] == 4 and torch.isfinite(images).all()
    assert load(exports["w6a6"]).backend == "reference"
    with pytest.raises(ConfigError, match="backend"):
        load(exports["w6a6"], backend="tensorrt")
    with pytest.raises(ConfigError, match="float32 on the CPU"):
        load(exports["w6a6"], backend="cpu-int8", dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="float32 on the CPU"):
        pipe.to(dtype=torch.bfloat16)
