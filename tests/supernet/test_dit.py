"""Class-conditional diffusion transformers through the model seam: any local ``DiTPipeline`` directory (a tiny
random one built here), checked, loaded, conditioned on class labels with classifier-free guidance, sampled by
tmpq's solvers exactly as diffusers' own pipeline samples, quantized, costed by hand and exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from search.candidate import Candidate
from search.errors import ConfigError, ModelLoadError
from supernet.conditioning import Conditioning, resolve_classes
from supernet.model_settings import ModelSettings
from supernet.models import check_model_dir, load_model
from supernet.sampling import make_noise
from supernet.testing_dit import TINY_LABELS, tiny_dit_pipeline

ALL = ("square", "circle", "line")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dit_pipeline(tmp_path_factory.mktemp("dit") / "tiny", scheduler="DPMSolverMultistepScheduler")


# -- the directory check and the classes ------------------------------------------------------------------------
def test_the_check_names_the_kind_and_what_is_missing(tiny: Path, tmp_path: Path) -> None:
    info = check_model_dir(tiny)
    assert (info.kind, info.conditional, info.condition) == ("dit", True, "classes")
    broken = shutil.copytree(tiny, tmp_path / "novae")
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae is missing"):
        check_model_dir(broken)


def test_classes_resolve_by_id_or_label_and_bad_ones_are_named(tiny: Path, tmp_path: Path) -> None:
    assert resolve_classes(tiny, None, None, 1) == Conditioning(ALL, 3.0)  # every class, the model's guidance
    assert resolve_classes(tiny, [2, "square", "1"], 1.5, 2).prompts == ("line", "square", "circle")
    for bad, field in (([7], "classes[0]"), ((0, "triangle"), "classes[1]")):
        with pytest.raises(ConfigError) as err:
            resolve_classes(tiny, bad, None, 1)
        assert err.value.field == field
    settings = ModelSettings(path=str(tiny), classes=(1,))
    resolved = settings.resolved_for_model(tiny, "classes")
    assert resolved.classes == ("circle",) and resolved.guidance_scale == 3.0
    assert resolved.conditioning(tiny) == Conditioning(("circle",), 3.0)
    with pytest.raises(ConfigError, match="class-conditional") as err:
        ModelSettings(path=str(tiny), prompts=("a cat",)).resolved_for_model(tiny, "classes")
    assert err.value.field == "prompts"
    with pytest.raises(ConfigError, match="text-to-image") as err:
        settings.validate_for_model("prompts")
    assert err.value.field == "classes"
    with pytest.raises(ConfigError, match="unconditional"):
        settings.validate_for_model("")
    with pytest.raises(ConfigError, match=r"prompts .* or classes"):
        ModelSettings(path=str(tiny), prompts=("a",), classes=(1,))
    with pytest.raises(ConfigError) as err:
        ModelSettings(path=str(tiny), classes=(True,))
    assert err.value.field == "classes[0]"
    assert "classes" not in ModelSettings(path="m").to_dict()  # specs stored before the field read the same
    no_labels = tiny_dit_pipeline(tmp_path / "nolabels", id2label=None, guidance_scale=None)
    every = resolve_classes(no_labels, None, None, 1)  # every class of the label table, by number
    assert every.prompts[:3] == ("0", "1", "2") and len(every.prompts) == 1000
    assert every.guidance_scale == 4.0  # DiTPipeline's default


# -- sampling -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_dpmsolver_samples_match_the_diffusers_pipeline(tmp_path: Path, learn_sigma: bool) -> None:
    """Same noise, labels and guidance, the searched (non-uniform) timesteps through diffusers' own
    DPMSolverMultistepScheduler in stock DiTPipeline: tmpq's DPM-Solver++(2M), guidance and VAE decode agree to
    float rounding, with and without a learned variance."""
    root = tiny_dit_pipeline(tmp_path / "m", scheduler="DPMSolverMultistepScheduler", learn_sigma=learn_sigma)
    model = load_model(root)
    timesteps = [901, 700, 400, 150, 20]
    noise = make_noise(3, model.sample_shape, 0)
    ours = model.sampler(8, solver="dpmsolver++").denoise(noise, timesteps)
    pipe = model.diffusers_pipeline(timesteps, model.scheduler_config)
    theirs = pipe([0, 1, 2], guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert ours.shape == theirs.shape == (3, 3, 8, 8)
    assert (ours * 0.5 + 0.5 - theirs).abs().max().item() < 1e-5
    assert not torch.allclose(ours, model.sampler(8, solver="ddim").denoise(noise, timesteps))


def test_samples_follow_their_classes_in_any_batch_and_the_identity_carries_them(tiny: Path) -> None:
    model = load_model(tiny, conditioning=Conditioning(("line", "square"), 2.0, images_per_prompt=2))
    assert model.condition_for(5).labels.tolist() == [2, 2, 0, 0, 2]
    whole = model.sampler(5).sample([800, 300, 0], 5, seed=3)
    split = model.sampler(2).sample([800, 300, 0], 5, seed=3)
    assert torch.allclose(whole, split, atol=1e-5)
    base = load_model(tiny)
    assert base.conditioning == Conditioning(ALL, 3.0) and base.identity().startswith(f"{base.model_hash}.")
    assert model.identity() != base.identity()
    base.configure(Conditioning(ALL, 1.0))
    unguided = base.sampler(3).sample([800, 300, 0], 3, seed=3)
    base.configure(Conditioning(ALL, 3.0))
    assert not torch.allclose(unguided, base.sampler(3).sample([800, 300, 0], 3, seed=3), atol=1e-3)
    with pytest.raises(ConfigError, match="not a class"):
        base.configure(Conditioning(("triangle",), 3.0))


# -- quantization and cost ----------------------------------------------------------------------------------------
def test_a_dit_blocks_sites_are_costed_by_hand(tiny: Path) -> None:
    """One DiT block on 16 tokens (8×8 latents, 2×2 patches) of width 16: four attention projections, both
    attention matmuls, the GELU feed-forward (inner width 64) per token; the adaLN-Zero modulation (16 → 6·16) and
    the block's own timestep embedder (256 → 16 → 16) once per sample (block 0's twice: the final modulation
    recomputes its embedding). Outside the blocks: the patch embedding
    (a 2×2 stride-2 convolution, 4 → 16 channels) and the final modulation (16 → 32, per sample) and projection
    (16 → 2·2·4, per token)."""
    from supernet.supernet import QuantSupernet

    model = load_model(tiny)
    supernet = QuantSupernet.build(model, [4, 8])
    try:
        n, c, inner = 16, 16, 64
        macs = {
            s[len("transformer_blocks.1.") :]: m
            for s, m in supernet.cost_model.macs.items()
            if s.startswith("transformer_blocks.1.")
        }
        assert macs == {
            **{f"attn1.{p}": n * c * c for p in ("to_q", "to_k", "to_v", "to_out.0")},
            "attn1.qk": n * n * c,
            "attn1.pv": n * n * c,
            "ff.net.0.proj": n * c * inner,
            "ff.net.2": n * inner * c,
            "norm1.linear": c * 6 * c,
            "norm1.emb.timestep_embedder.linear_1": 256 * c,
            "norm1.emb.timestep_embedder.linear_2": c * c,
        }
        # the final modulation reads block 0's embedder again: its two linears run twice per step
        emb = "transformer_blocks.0.norm1.emb.timestep_embedder."
        assert supernet.cost_model.macs[emb + "linear_1"] == 2 * 256 * c
        assert supernet.cost_model.macs[emb + "linear_2"] == 2 * c * c
        top = {s: m for s, m in supernet.cost_model.macs.items() if not s.startswith("transformer_blocks.")}
        assert top == {"pos_embed.proj": n * c * 4 * 2 * 2, "proj_out_1": c * 2 * c, "proj_out_2": n * c * 2 * 2 * 4}
        assert {supernet.site_blocks[s] for s in supernet.sites} == {
            "pos_embed",
            "transformer_blocks.0",
            "transformer_blocks.1",
            "proj_out_1",
            "proj_out_2",
        }
        units = supernet.site_units("kind")  # the search's per-kind-of-layer granularity
        assert units["transformer_blocks.1.attn1.qk"] == "transformer_blocks.1/attention"
        assert units["transformer_blocks.1.ff.net.2"] == "transformer_blocks.1/mlp"
        assert units["transformer_blocks.1.norm1.linear"] == "transformer_blocks.1/modulation"
        assert units["proj_out_1"] == "proj_out_1/modulation" and units["pos_embed.proj"] == "pos_embed/other"
        assert len(set(units.values())) == 2 * 3 + 3
    finally:
        supernet.detach()


@pytest.mark.slow
def test_tcaq_calibrates_a_dit_and_the_export_runs_in_diffusers(tiny: Path, tmp_path: Path) -> None:
    """TCR, DAQ and PAR with block reconstruction (a few steps) calibrate the transformer; W8A8 is closer to FP than
    W4A4; the export samples bit-identically to the assembled candidate and its ``pipeline`` is a stock DiTPipeline
    that runs the searched timesteps with the quantized transformer."""
    from diffusers import DiTPipeline, DPMSolverMultistepScheduler

    from supernet.artifact import get_or_build_supernet
    from supernet.calibration.settings import CalibrationSettings
    from supernet.export import export_candidate, load
    from supernet.runtime.measure import measure_export

    model = load_model(tiny)
    calib = CalibrationSettings.from_dict(
        {
            "grid_steps": 3,
            "samples": 6,
            "recon_samples": 6,
            "recon_batch": 6,
            "recon_iters": 4,
            "report_ranking": False,
            "workers": 1,
        }
    )
    supernet = get_or_build_supernet(model, [4, 8], calib_settings=calib, cache_dir=tmp_path / "c", batch_size=6)
    meta = supernet.calibration_metadata
    assert meta["switches"]["tcr"] and meta["switches"]["daq"] and meta["switches"]["par"]
    sites = supernet.sites
    schedule = (901, 600, 300, 0)
    fp = model.sampler(6, solver="dpmsolver++").sample(schedule, 6, 0)
    errors = []
    for bits in (8, 4):
        cand = Candidate.from_maps(schedule, dict.fromkeys(sites, bits), dict.fromkeys(sites, bits))
        with supernet.assembled(cand):
            errors.append(((model.sampler(6, solver="dpmsolver++").sample(schedule, 6, 0) - fp) ** 2).mean().item())
    assert 0 < errors[0] < errors[1]
    cand = Candidate.from_maps(schedule, {s: 4 if i % 2 else 8 for i, s in enumerate(sites)}, dict.fromkeys(sites, 8))
    with supernet.assembled(cand):
        searched = model.sampler(6, solver="dpmsolver++").sample(list(cand.timesteps), 6, 0)
    out = export_candidate(supernet, cand, tmp_path / "export", solver="dpmsolver++")
    export = load(out)
    assert export.model.conditioning == model.conditioning
    assert torch.equal(export.sample(6, 0), searched)
    pipe = export.pipeline
    assert type(pipe) is DiTPipeline and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.labels["stroke"] == 2  # id2label travels with the export
    labels = model.condition_for(6).labels.tolist()
    images = pipe(labels, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert pipe.scheduler.timesteps.tolist() == list(cand.timesteps)
    assert (images - (searched * 0.5 + 0.5)).abs().max().item() < 1e-5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fp_components"] == ["vae"]
    assert json.loads((out / "model_index.json").read_text())["id2label"] == {str(k): v for k, v in TINY_LABELS.items()}
    measured = measure_export(out, tiny, batch_size=4, repeats=2, reference_steps=4, memory=False)  # a condition each
    assert measured.backend == "reference" and measured.step_ms > 0 and measured.fp_step_ms > 0
