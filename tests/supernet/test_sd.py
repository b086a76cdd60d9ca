"""Stable Diffusion pipelines through the model seam: any local directory of that layout (a tiny random one built
here), checked, loaded, conditioned on prompts with classifier-free guidance, sampled by tmpq's solvers exactly as
diffusers' own pipeline samples, quantized and costed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from search.candidate import Candidate
from search.errors import ConfigError, ModelLoadError
from supernet.conditioning import Conditioning
from supernet.models import check_model_dir, load_model
from supernet.sampling import make_noise
from supernet.testing_sd import TINY_PROMPTS, tiny_sd_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "tiny", scheduler="DPMSolverMultistepScheduler")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- the directory check ------------------------------------------------------------------------------------------
def test_the_check_names_the_kind_and_what_is_missing(tiny: Path, tmp_path: Path) -> None:
    checked = check_model_dir(tiny)
    assert checked.kind == "stable-diffusion" and checked.conditional
    for part in ("vae", "text_encoder", "tokenizer"):
        broken = _copy(tiny, tmp_path / f"no-{part}")
        shutil.rmtree(broken / part)
        with pytest.raises(ModelLoadError, match=f"the pipeline's {part} is missing"):
            check_model_dir(broken)


def test_pickled_weights_and_other_pipelines_are_refused(tiny: Path, tmp_path: Path) -> None:
    pickled = _copy(tiny, tmp_path / "pickled")
    weights = next((pickled / "vae").glob("*.safetensors"))
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match=r"vae/ holds pickled weights .*only safetensors"):
        check_model_dir(pickled)
    other = _copy(tiny, tmp_path / "xl")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ModelLoadError, match=r"unsupported pipeline class 'StableDiffusionXLPipeline' \(supported: "):
        check_model_dir(other)


# -- conditioning and sampling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_dpmsolver_samples_match_the_diffusers_pipeline(tmp_path: Path, prediction_type: str) -> None:
    """Same noise, prompts and guidance, the searched (non-uniform) timesteps through diffusers' own
    DPMSolverMultistepScheduler: tmpq's DPM-Solver++(2M), guidance and VAE decode agree to float rounding."""
    root = tiny_sd_pipeline(tmp_path / "m", prediction_type=prediction_type, scheduler="DPMSolverMultistepScheduler")
    model = load_model(root)
    assert model.conditioning == Conditioning(TINY_PROMPTS, 3.0)
    timesteps = [901, 700, 400, 150, 20]
    noise = make_noise(len(TINY_PROMPTS), model.sample_shape, 0)
    ours = model.sampler(8, solver="dpmsolver++").denoise(noise, timesteps)
    theirs = model.pipeline(
        list(TINY_PROMPTS), timesteps=timesteps, latents=noise.clone(), guidance_scale=3.0, output_type="pt"
    ).images
    assert ours.shape == theirs.shape == (3, 3, 8, 8)
    assert (ours * 0.5 + 0.5 - theirs).abs().max().item() < 1e-5
    assert not torch.allclose(ours, model.sampler(8, solver="ddim").denoise(noise, timesteps))


def test_samples_follow_their_prompts_in_any_batch(tiny: Path) -> None:
    model = load_model(tiny, conditioning=Conditioning(TINY_PROMPTS, 2.0, "blurry", images_per_prompt=2))
    assert model.conditioning.prompt_index(7) == [0, 0, 1, 1, 2, 2, 0]
    whole = model.sampler(7).sample([800, 300, 0], 7, seed=3)
    split = model.sampler(3).sample([800, 300, 0], 7, seed=3)
    assert torch.allclose(whole, split, atol=1e-5)  # batches differ in float rounding only
    first = model.sampler(2).sample([800, 300, 0], 2, seed=3)  # a prefix keeps its prompts
    assert torch.allclose(first, whole[:2], atol=1e-5)
    unguided = load_model(tiny, conditioning=Conditioning(TINY_PROMPTS, 1.0)).sampler(7).sample([800, 300, 0], 7, 3)
    assert not torch.allclose(unguided, whole, atol=1e-3)


def test_the_identity_carries_the_prompts_and_guidance(tiny: Path) -> None:
    model = load_model(tiny)
    base = model.identity()
    assert base.startswith(f"{model.model_hash}.")
    model.configure(Conditioning(TINY_PROMPTS, 5.0))
    assert model.identity() != base
    model.configure(Conditioning(TINY_PROMPTS, 3.0))
    assert model.identity() == base


def test_long_prompts_are_truncated_with_a_warning(tiny: Path) -> None:
    model = load_model(tiny, conditioning=Conditioning(("a " * 40 + "long prompt",), 2.0))
    assert len(model.warnings) == 1 and "truncated" in model.warnings[0]
    assert model.sampler(2).sample([500, 0], 2, seed=0).shape == (2, 3, 8, 8)


def test_an_unconditioned_model_says_what_it_needs(tmp_path: Path) -> None:
    root = tiny_sd_pipeline(tmp_path / "bare", prompts=None)
    model = load_model(root)
    with pytest.raises(ConfigError, match="has no prompts"):
        model.sampler(2).sample([500, 0], 2, seed=0)


# -- quantization and cost ----------------------------------------------------------------------------------------
def test_cross_attention_and_geglu_are_sites_costed_by_hand(tiny: Path) -> None:
    """One transformer block of the first down block: 64 latent tokens of width 16, 16 text tokens of width 16,
    a GEGLU feed-forward of inner width 64 (its projection outputs 2·64)."""
    from supernet.supernet import QuantSupernet

    model = load_model(tiny)
    supernet = QuantSupernet.build(model, [4, 8])
    try:
        prefix = "down_blocks.0.attentions.0.transformer_blocks.0."
        macs = {s[len(prefix) :]: m for s, m in supernet.cost_model.macs.items() if s.startswith(prefix)}
        n, c, text, d_text, inner = 64, 16, 16, 16, 64
        expected = {
            **{f"attn1.{p}": n * c * c for p in ("to_q", "to_k", "to_v", "to_out.0")},
            "attn1.qk": n * n * c,
            "attn1.pv": n * n * c,
            "attn2.to_q": n * c * c,
            "attn2.to_k": text * d_text * c,
            "attn2.to_v": text * d_text * c,
            "attn2.to_out.0": n * c * c,
            "attn2.qk": n * text * c,
            "attn2.pv": n * text * c,
            "ff.net.0.proj": n * c * 2 * inner,
            "ff.net.2": n * inner * c,
        }
        assert macs == expected
    finally:
        supernet.detach()


@pytest.mark.slow
def test_a_calibrated_sd_supernet_samples_each_candidate(tiny: Path, tmp_path: Path) -> None:
    from supernet.artifact import META_FILE, get_or_build_supernet, load_supernet
    from supernet.calibration.settings import CalibrationSettings

    model = load_model(tiny)
    calib = CalibrationSettings.from_dict({"strategy": "range", "grid_steps": 3, "samples": 6, "report_ranking": False})
    supernet = get_or_build_supernet(model, [4, 8], calib_settings=calib, cache_dir=tmp_path, batch_size=6)
    sites = supernet.sites
    assert any(s.endswith("attn2.pv") for s in sites) and any(s.endswith("ff.net.0.proj") for s in sites)
    schedule = (900, 500, 100, 0)
    fp = model.sampler(6).sample(schedule, 6, 0)
    w8a8 = Candidate.from_maps(schedule, dict.fromkeys(sites, 8), dict.fromkeys(sites, 8))
    w4a4 = Candidate.from_maps(schedule, dict.fromkeys(sites, 4), dict.fromkeys(sites, 4))
    errors = {}
    for cand in (w8a8, w4a4):
        with supernet.assembled(cand):
            errors[cand.bits_summary()] = ((model.sampler(6).sample(schedule, 6, 0) - fp) ** 2).mean().item()
    assert 0 < errors[w8a8.bits_summary()] < errors[w4a4.bits_summary()]
    supernet.detach()
    again = load_model(tiny)
    reloaded = load_supernet(next(p for p in tmp_path.iterdir() if (p / META_FILE).is_file()), again)
    with reloaded.assembled(w8a8):
        assert ((again.sampler(6).sample(schedule, 6, 0) - fp) ** 2).mean().item() == errors[w8a8.bits_summary()]


@pytest.mark.slow
def test_an_export_is_a_diffusers_pipeline_running_the_searched_schedule(tiny: Path, tmp_path: Path) -> None:
    """The export samples bit-identically to the supernet's assembled candidate (tmpq's sampler), and its
    ``pipeline`` is a genuine StableDiffusionPipeline that, called like any, runs the searched timesteps through
    diffusers' DPMSolverMultistepScheduler with the quantized UNet."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from supernet.artifact import get_or_build_supernet
    from supernet.calibration.settings import CalibrationSettings
    from supernet.export import export_candidate, load

    model = load_model(tiny)
    calib = CalibrationSettings.from_dict({"strategy": "range", "grid_steps": 3, "samples": 6, "report_ranking": False})
    supernet = get_or_build_supernet(model, [4, 8], calib_settings=calib, cache_dir=tmp_path / "c", batch_size=6)
    sites = supernet.sites
    cand = Candidate.from_maps(
        (901, 600, 300, 0), {s: 4 if i % 2 else 8 for i, s in enumerate(sites)}, dict.fromkeys(sites, 8)
    )
    with supernet.assembled(cand):
        searched = model.sampler(6, solver="dpmsolver++").sample(list(cand.timesteps), 6, 0)
    out = export_candidate(supernet, cand, tmp_path / "export", solver="dpmsolver++")
    for part in ("vae", "text_encoder", "tokenizer"):
        assert (out / part).is_dir()
    export = load(out)
    assert export.solver == "dpmsolver++" and export.model.conditioning == model.conditioning
    assert torch.equal(export.sample(6, 0), searched)
    pipe = export.pipeline
    assert type(pipe) is StableDiffusionPipeline and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    prompts = [TINY_PROMPTS[i] for i in model.conditioning.prompt_index(6)]
    images = pipe(prompts, latents=make_noise(6, model.sample_shape, 0), guidance_scale=3.0, output_type="pt").images
    assert pipe.scheduler.timesteps.tolist() == list(cand.timesteps)
    assert (images - (searched * 0.5 + 0.5)).abs().max().item() < 1e-5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fp_components"] == ["text_encoder", "tokenizer", "vae"] and manifest["solver"] == "dpmsolver++"
    (out / "vae" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="corrupt"):
        load(out)


def test_latent_mse_compares_samples_before_the_decoder(tiny: Path, tmp_path: Path) -> None:
    from supernet.artifact import get_or_build_supernet
    from supernet.calibration.settings import CalibrationSettings
    from workers.evaluator import EvaluatorConfig, InProcessEvaluator

    model = load_model(tiny)
    calib = CalibrationSettings.from_dict({"strategy": "range", "grid_steps": 3, "samples": 4, "report_ranking": False})
    supernet = get_or_build_supernet(model, [4], calib_settings=calib, cache_dir=tmp_path, batch_size=4)
    base = {"model_path": str(tiny), "supernet_path": "unused", "samples": 4, "reference_steps": 6}
    latent = InProcessEvaluator(model, supernet, EvaluatorConfig(**base, objective="latent_mse"))
    pixel = InProcessEvaluator(model, supernet, EvaluatorConfig(**base, objective="mse"))
    assert latent.reference.shape == (4, *model.sample_shape) and pixel.reference.shape == (4, 3, 8, 8)
    cand = supernet.uniform(4, 4, (900, 300, 0))
    (a,), (b,) = latent.evaluate([cand]), pixel.evaluate([cand])
    assert a.ok and b.ok and a.quality == a.extra["latent_mse"] > 0 and "psnr" not in a.extra
    assert b.quality == b.extra["mse"] > 0 and a.quality != b.quality
    supernet.detach()
