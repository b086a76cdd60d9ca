"""Export a candidate, load it back: same samples as the supernet's assembled candidate, a file that shrinks with the
weight bits, a complete manifest, and clear refusals of broken directories."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from search.candidate import Candidate
from search.errors import ConfigError, InvalidCandidate, ModelLoadError
from supernet.errors import CalibrationError
from supernet.export import (
    MANIFEST_FILE,
    QUANT_CONFIG_FILE,
    SCHEDULER_CONFIG_FILE,
    UNET_WEIGHTS_FILE,
    export_candidate,
    load,
    pack_codes,
    packed_size,
    unpack_codes,
)
from supernet.models import NoiseSchedule
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.sampling import Sampler
from supernet.settings import SupernetSettings
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, random_data
from supernet.zoo.testbed import testbed_scheduler as make_scheduler
from supernet.zoo.testbed import testbed_unet as make_testbed

#: Plain ranges (fast, and independent of the default strategy's reconstruction); log2 for the softmax input.
CALIB = dataclasses.replace(TINY_CALIB, strategy="range", pv_quantizer="log2")
SCHEDULER = dict(make_scheduler().config)
TIMESTEPS = (950, 640, 380, 120, 7)  # none on the calibration grid (999, 500, 0): nearest-grid lookup matters


def _supernet(bits: tuple[int, ...], settings: SupernetSettings | None = None) -> QuantSupernet:
    sn = QuantSupernet.build(make_testbed(0).eval(), bits, settings, CALIB)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=(999, 500, 0)))
    return sn


@pytest.fixture(scope="module")
def supernet() -> QuantSupernet:
    """The testbed architecture (random weights) calibrated at 3, 4 and 8 bits (asymmetric weights)."""
    return _supernet((3, 4, 8))


@pytest.fixture(scope="module")
def symmetric() -> QuantSupernet:
    """Signed weight and activation codes."""
    return _supernet((4, 8), SupernetSettings(weight_symmetric=True, act_symmetric=True))


def mixed(sn: QuantSupernet, seed: int = 0) -> Candidate:
    """Random widths per site, one site with FP weights and one with FP activations."""
    rng = random.Random(seed)
    w = {s: rng.choice(sn.bit_options) for s in sn.sites}
    a = {s: rng.choice(sn.bit_options) for s in sn.sites}
    w[sn.sites[0]] = 32
    a[sn.sites[1]] = 16
    return Candidate.from_maps(TIMESTEPS, w, a)


def reference_samples(sn: QuantSupernet, candidate: Candidate, n: int, seed: int) -> torch.Tensor:
    sampler = Sampler(sn.model, schedule=NoiseSchedule.from_config(SCHEDULER))
    with sn.assembled(candidate):
        return sampler.sample(candidate.timesteps, n, seed)


def export(sn: QuantSupernet, candidate: Candidate, out: Path, **kwargs) -> Path:
    return export_candidate(sn, candidate, out, scheduler_config=SCHEDULER, **kwargs)


# -- bit packing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric_codes", [False, True])
@pytest.mark.parametrize("bits", range(2, 9))
def test_codes_pack_to_bits_per_code_and_back(bits: int, symmetric_codes: bool) -> None:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric_codes else (0, 2**bits - 1)
    dtype = torch.int8 if symmetric_codes else torch.uint8
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(lo, hi + 1, (7, 5, 3), generator=gen).to(dtype)
    codes.view(-1)[:2] = torch.tensor([lo, hi], dtype=dtype)  # both ends of the range survive
    packed = pack_codes(codes, bits, symmetric_codes)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(codes.numel(), bits) == -(-105 * bits // 8)
    back = unpack_codes(packed, bits, symmetric_codes, codes.shape)
    assert back.dtype == dtype and torch.equal(back, codes)
    with pytest.raises(ValueError, match="packed bytes"):
        unpack_codes(packed[:-1], bits, symmetric_codes, codes.shape)
    if bits < 8:
        with pytest.raises(ValueError, match="outside"):
            pack_codes(torch.full((3,), hi + 1, dtype=torch.int16), bits, symmetric_codes)


def test_four_bit_codes_take_two_per_byte_low_nibble_first() -> None:
    packed = pack_codes(torch.tensor([1, 2, 15, 0], dtype=torch.uint8), 4, False)
    assert packed.tolist() == [0x21, 0x0F]


# -- samples ----------------------------------------------------------------------------------------------------
def test_an_export_loads_in_bfloat16_and_samples_close_to_float32(tmp_path: Path) -> None:
    from supernet.artifact import SHIPPED_DIR, load_supernet
    from supernet.metrics import psnr
    from supernet.models import TESTBED_DIR, load_model

    model = load_model(TESTBED_DIR)
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    sn = load_supernet(shipped, model)
    out = export_candidate(sn, sn.uniform(8, 8, TIMESTEPS), tmp_path / "export", scheduler_config=SCHEDULER)
    full = load(out).sample(6, seed=3)
    half = load(out, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    images = half.sample(6, seed=3)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert psnr(images, full) > 30.0  # measured 38.6 dB (float16: 36.1 dB)


@pytest.mark.parametrize("which", ["supernet", "symmetric"])
def test_export_samples_equal_the_assembled_candidate(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sn: QuantSupernet = request.getfixturevalue(which)
    candidate = mixed(sn, seed=1)
    before = sn.state()
    out = export(sn, candidate, tmp_path / "export", seed=11)
    assert sn.state() == before, "exporting changed the supernet's assembled state"
    pipe = load(out)
    assert pipe.timesteps == TIMESTEPS and pipe.candidate == candidate
    assert torch.equal(pipe.sample(6, seed=11, batch_size=4), reference_samples(sn, candidate, 6, seed=11))
    noise = torch.randn(2, *TESTBED_SHAPE, generator=torch.Generator().manual_seed(5))
    with sn.assembled(candidate):
        expected = Sampler(sn.model, schedule=pipe.model.schedule).denoise(noise, TIMESTEPS)
    assert torch.equal(pipe.denoise(noise), expected)

    # the loaded UNet holds the dequantized codes, not the FP weights, for every quantized site
    w = candidate.w_map()
    quantized = [s for s in sn.sites if isinstance(sn.site(s), QuantWeightLayer) and w[s] in sn.bit_options]
    modules = dict(pipe.denoiser.named_modules())
    for name in quantized[:5]:
        layer = modules[name]
        assert torch.equal(layer.weight, sn.site(name).slots[w[name]].dequantize())
        assert not torch.equal(layer.weight, sn.site(name).weight)
    fp_site = sn.sites[0]
    assert torch.equal(modules[fp_site].weight, sn.site(fp_site).weight)  # FP weights are stored as they are


def test_uniform_and_log2_activation_parameters_are_both_carried(supernet: QuantSupernet, tmp_path: Path) -> None:
    candidate = supernet.uniform(4, 8, TIMESTEPS)
    out = export(supernet, candidate, tmp_path / "export")
    qcfg = json.loads((out / QUANT_CONFIG_FILE).read_text())
    kinds = {p["kind"] for s in qcfg["sites"].values() for act in s["act"].values() for p in act["params"]}
    assert kinds == {"uniform", "log2"}
    assert qcfg["grid"] == [999, 500, 0]  # the grid points TIMESTEPS use (nearest), descending
    pv = next(s for n, s in qcfg["sites"].items() if n.endswith(".pv"))
    assert pv["act"]["a"]["params"][0]["kind"] == "log2" and pv["act"]["b"]["bits"] == 4  # K/V width = weight gene
    assert torch.equal(load(out).sample(3, seed=2), reference_samples(supernet, candidate, 3, seed=2))


def test_only_the_grid_timesteps_the_schedule_needs_are_exported(supernet: QuantSupernet, tmp_path: Path) -> None:
    candidate = supernet.uniform(8, 8, (900, 700, 600))  # all nearest to 999 or 500, never 0
    out = export(supernet, candidate, tmp_path / "export")
    qcfg = json.loads((out / QUANT_CONFIG_FILE).read_text())
    assert qcfg["grid"] == [999, 500]
    assert torch.equal(load(out).sample(2, seed=4), reference_samples(supernet, candidate, 2, seed=4))


@pytest.mark.skipif(not hasattr(QuantSupernet, "reparameterize"), reason="no per-channel reparameterization yet")
def test_a_reparameterized_supernet_exports_exactly(tmp_path: Path) -> None:
    """TCR-style factors: folded ones live in the FP parameters, explicit ones become input pre-scales."""
    from supernet.calibration.reparam import plan_groups

    sn = _supernet((4, 8))
    gen = torch.Generator().manual_seed(3)
    factors = {}
    for group in plan_groups(sn.denoiser, {n: sn.site(n) for n in sn.sites}):
        r = 0.5 + 2.5 * torch.rand(sn.site(group.sites[0]).weight.shape[1], generator=gen)
        factors.update(dict.fromkeys(group.sites, r))
    rep = sn.reparameterize(factors)
    assert rep.explicit and rep.folded, "the testbed has both kinds"
    candidate = mixed(sn, seed=4)
    out = export(sn, candidate, tmp_path / "export")
    qcfg = json.loads((out / QUANT_CONFIG_FILE).read_text())
    assert {n for n, e in qcfg["sites"].items() if e.get("input_prescale")} == set(rep.explicit)
    assert qcfg["reparameterization"] == rep.report()
    assert torch.equal(load(out).sample(4, seed=8), reference_samples(sn, candidate, 4, seed=8))


# -- size -------------------------------------------------------------------------------------------------------
def _data_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and the JSON header)."""
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


def test_the_weights_file_shrinks_in_proportion_to_the_weight_bits(supernet: QuantSupernet, tmp_path: Path) -> None:
    fp_file = tmp_path / "fp.safetensors"  # the FP32 checkpoint, written as diffusers writes one
    save_file({k: v.contiguous() for k, v in supernet.denoiser.state_dict().items()}, str(fp_file))
    fp_size = fp_file.stat().st_size
    params = supernet.cost_model.params  # weight parameters per site (matmul sites have none)
    site_params = sum(params.values())
    total = sum(p.numel() for p in supernet.denoiser.parameters())
    layers = [supernet.site(s) for s in supernet.sites if isinstance(supernet.site(s), QuantWeightLayer)]
    channels = sum(layer.weight.shape[0] for layer in layers)
    sizes, ratios, expect = {}, {}, {}
    for bits in (3, 4, 8):
        candidate = supernet.uniform(bits, 8, TIMESTEPS)
        out = export(supernet, candidate, tmp_path / f"w{bits}")
        weights = out / UNET_WEIGHTS_FILE
        sizes[bits] = weights.stat().st_size
        ratios[bits] = sizes[bits] / fp_size
        expect[bits] = (site_params * bits / 8 + (total - site_params) * 4) / (total * 4)
        # the data is the codes at `bits` per weight, the rest in FP32, and per output channel a float32 scale and
        # a one-byte zero-point (packing rounds up to a byte per tensor); the header adds about 1% on this small net
        data = _data_bytes(weights)
        bound = site_params * bits / 8 + (total - site_params) * 4 + 5 * channels
        assert bound <= data <= bound + len(layers), (bits, data, bound)
        assert expect[bits] <= ratios[bits] <= expect[bits] + 0.015, (bits, ratios[bits], expect[bits])
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        assert manifest["sizes"]["weights_file_bytes"] == sizes[bits]
        assert manifest["objectives"]["weight_bytes"] == supernet.cost(candidate).weight_bytes
    print(f"weights file / FP32 checkpoint: {ratios} (from the bits alone: {expect})")
    # each extra weight bit costs one bit per weight parameter
    assert abs((sizes[4] - sizes[3]) - site_params / 8) <= len(layers) + 512
    assert abs((sizes[8] - sizes[4]) - site_params * 4 / 8) <= len(layers) + 512
    assert ratios[3] < ratios[4] < 0.15 < ratios[8] < 0.3


# -- manifest and diffusers layout ------------------------------------------------------------------------------
def test_manifest_and_configs_round_trip(supernet: QuantSupernet, tmp_path: Path) -> None:
    candidate = mixed(supernet, seed=2)
    out = export(
        supernet,
        candidate,
        tmp_path / "export",
        objectives={"quality": 0.25, "psnr": float("inf")},
        seed=42,
        job={"id": 7, "objective": "mse"},
    )
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert Candidate.from_dict(manifest["candidate"]) == candidate
    assert manifest["candidate_key"] == candidate.key() and manifest["bits"] == candidate.bits_summary()
    assert manifest["model_hash"] == supernet.model_hash and manifest["seed"] == 42
    assert manifest["tmpq_version"] == metadata.version("tmpq") and manifest["job"] == {"id": 7, "objective": "mse"}
    objectives = manifest["objectives"]
    assert objectives["quality"] == 0.25 and objectives["psnr"] is None  # inf is not JSON
    assert objectives["bitops"] == supernet.cost(candidate).bitops and objectives["steps"] == len(TIMESTEPS)
    assert manifest["supernet"]["bit_options"] == [3, 4, 8]
    assert manifest["supernet"]["calibration"] == CALIB.to_dict()
    pipe = load(out)
    assert pipe.manifest == manifest and pipe.objectives["quality"] == 0.25

    # diffusers itself reads the layout: the UNet architecture from its config, the scheduler from its config
    from diffusers import DDIMScheduler, UNet2DModel

    unet = UNet2DModel.from_config(UNet2DModel.load_config(out / "unet"))
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in supernet.denoiser.parameters())
    scheduler = DDIMScheduler.from_pretrained(out / "scheduler")
    assert torch.equal(scheduler.alphas_cumprod.to(torch.float32), pipe.model.alphas_cumprod)
    sched = json.loads((out / SCHEDULER_CONFIG_FILE).read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["timesteps"] == list(TIMESTEPS)


# -- refusals ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_export(supernet: QuantSupernet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(supernet, supernet.uniform(4, 8, TIMESTEPS), tmp_path_factory.mktemp("good") / "export")


def _broken(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "broken"))


def test_missing_and_foreign_directories_are_refused(tmp_path: Path, good_export: Path) -> None:
    with pytest.raises(ModelLoadError, match="path does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"manifest\.json: missing") as exc:
        load(tmp_path / "empty")
    assert exc.value.path == str(tmp_path / "empty" / MANIFEST_FILE)
    broken = _broken(good_export, tmp_path)
    (broken / QUANT_CONFIG_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"quant_config\.json: missing"):
        load(broken)


def test_another_format_version_is_refused(tmp_path: Path, good_export: Path) -> None:
    broken = _broken(good_export, tmp_path)
    manifest = json.loads((broken / MANIFEST_FILE).read_text())
    (broken / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelLoadError, match=r"manifest\.json: export format version 99 is not supported"):
        load(broken)
    (broken / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(ModelLoadError, match="not a tmpq export"):
        load(broken)
    (broken / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"manifest\.json: unreadable"):
        load(broken)


def test_corrupt_files_are_refused_naming_them(tmp_path: Path, good_export: Path) -> None:
    broken = _broken(good_export, tmp_path)
    weights = broken / UNET_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"quantized\.safetensors: corrupt") as exc:
        load(broken)
    assert exc.value.path == str(weights)
    weights.write_bytes(bytes(data[:100]))  # truncated, and the checksums not consulted
    with pytest.raises(ModelLoadError, match=r"quantized\.safetensors: unreadable"):
        load(broken, check=False)
    qcfg = json.loads((good_export / QUANT_CONFIG_FILE).read_text())
    site = next(n for n, s in qcfg["sites"].items() if "weight" in s)
    qcfg["sites"][site]["weight"]["bits"] = 2  # codes no longer match their declared width
    shutil.copy(good_export / UNET_WEIGHTS_FILE, weights)
    (broken / QUANT_CONFIG_FILE).write_text(json.dumps(qcfg))
    with pytest.raises(ModelLoadError, match=rf"corrupt codes of '{site}'"):
        load(broken, check=False)


def test_export_refusals(supernet: QuantSupernet, tmp_path: Path) -> None:
    candidate = supernet.uniform(4, 8, TIMESTEPS)
    out = export(supernet, candidate, tmp_path / "export")
    with pytest.raises(ConfigError, match="is not empty") as exc:
        export(supernet, candidate, out)
    assert exc.value.field == "out"
    other = supernet.uniform(8, 8, TIMESTEPS)
    assert load(export(supernet, other, out, overwrite=True)).candidate == other
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary directory was left behind"
    with pytest.raises(InvalidCandidate, match="not among the supernet's options"):
        export(supernet, supernet.uniform(6, 8, TIMESTEPS), tmp_path / "six")
    with pytest.raises(InvalidCandidate, match="unknown site"):
        export(supernet, Candidate.uniform(TIMESTEPS, ["nope", *supernet.sites], 4, 4), tmp_path / "unknown")
    assert not (tmp_path / "six").exists() and not (tmp_path / "unknown").exists()
    fresh = QuantSupernet.build(make_testbed(1).eval(), (4, 8), calib_settings=CALIB)
    with pytest.raises(CalibrationError, match="calibrated"):
        export(fresh, candidate, tmp_path / "fresh")


def test_a_site_with_hooks_the_format_cannot_carry_is_refused(tmp_path: Path) -> None:
    sn = _supernet((4,))
    layer = next(sn.site(s) for s in sn.sites if isinstance(sn.site(s), QuantWeightLayer))
    handle = layer.register_forward_pre_hook(lambda _m, args: (args[0] * 0.5,))
    with pytest.raises(CalibrationError, match=f"{layer.site}: the site has forward hooks"):
        export(sn, sn.uniform(4, 4, TIMESTEPS), tmp_path / "hooked")
    handle.remove()
    assert load(export(sn, sn.uniform(4, 4, TIMESTEPS), tmp_path / "plain")).timesteps == TIMESTEPS
