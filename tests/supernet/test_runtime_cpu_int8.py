"""The cpu-int8 backend: every eligible conv/linear site of an export computes on oneDNN's int8 kernels with the
same codes as the reference (fake-quant) computation, layer by layer, and the whole denoiser stays close to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.models import TESTBED_DIR, load_model
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.runtime import cpu_int8_unavailable, install_cpu_int8
from supernet.runtime.cpu_int8 import kernel_of
from supernet.sampling import uniform_schedule
from tests.torch_threads import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.skipif(cpu_int8_unavailable() is not None, reason=str(cpu_int8_unavailable()))

SCHEDULE = uniform_schedule(10, 1000)


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
        "fp-input": Candidate.from_maps(SCHEDULE, *fp_first),
    }
    return {
        name: export_candidate(sn, c, root / name, scheduler_config=model.scheduler_config)
        for name, c in candidates.items()
    }


def test_sites_get_int8_kernels_exactly_or_requantized_and_fp_inputs_stay_reference(exports) -> None:
    w6 = install_cpu_int8(load(exports["w6a6"]).denoiser)
    assert w6 and set(w6.values()) == {"int8"}  # asymmetric 6-bit codes minus their zero-point fit int8 exactly
    w8 = install_cpu_int8(load(exports["w8a8"]).denoiser)
    assert set(w8.values()) == {"int8-requantized"}  # asymmetric 8-bit codes do not: re-quantized symmetrically
    mixed = install_cpu_int8(load(exports["fp-input"]).denoiser)
    assert mixed["conv_in"] == "reference: FP weights or inputs"
    assert sum(v == "int8" for v in mixed.values()) == len(mixed) - 1


def test_each_int8_site_computes_what_the_reference_computes_from_the_same_codes(exports) -> None:
    pipe = load(exports["w6a6"])
    install_cpu_int8(pipe.denoiser)
    worst: list[float] = []

    def check(module: QuantWeightLayer, args: tuple, out: torch.Tensor) -> None:
        kernel = kernel_of(module)
        module.use_kernel(None)  # inside the denoiser's forward: the timestep is selected
        try:
            ref = module.forward(args[0])  # not module(): its hooks would run again
        finally:
            module.use_kernel(kernel)
        worst.append(float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6)))

    layers = [m for m in pipe.denoiser.modules() if isinstance(m, QuantWeightLayer) and kernel_of(m) is not None]
    handles = [m.register_forward_hook(check) for m in layers]
    x = torch.randn(4, *pipe.model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (900, 500, 0):
            pipe.model.predict_noise(x, t)
    for h in handles:
        h.remove()
    assert len(worst) == 3 * len(layers)
    assert max(worst) < 1e-4, max(worst)  # float accumulation order only


def test_a_whole_step_stays_close_to_the_reference(exports) -> None:
    ref, fast = load(exports["w8a8"]), load(exports["w8a8"])
    install_cpu_int8(fast.denoiser)
    x = torch.randn(16, *ref.model.sample_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref.model.predict_noise(x, 500), fast.model.predict_noise(x, 500)
    psnr = 10 * torch.log10((a.max() - a.min()) ** 2 / ((a - b) ** 2).mean())
    assert psnr > 35.0, float(psnr)


def test_load_picks_the_backend_and_refuses_what_it_cannot_run(exports) -> None:
    from search.errors import ConfigError

    pipe = load(exports["w6a6"], backend="cpu-int8")
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
