"""The model seam's contract: the UNet2DModel adapter computes what diffusers computes, the directory check and the
kind registry are torch-free, and an unsupported model is refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.errors import ConfigError, ModelLoadError
from supernet.artifact import META_FILE, SHIPPED_DIR
from supernet.models import (
    TESTBED_DIR,
    UNET2D,
    DiffusionAdapter,
    ModelKind,
    ModuleAdapter,
    NoiseSchedule,
    UNet2DAdapter,
    as_adapter,
    check_model_dir,
    load_model,
    model_hash,
)
from supernet.sampling import Sampler
from supernet.testing import TOY_SHAPE, toy_net
from supernet.zoo.testbed import random_testbed
from supernet.zoo.testbed import testbed_unet as make_testbed


def test_predict_noise_is_the_raw_diffusers_unet(testbed_model: UNet2DAdapter) -> None:
    from diffusers import UNet2DModel

    raw = UNet2DModel.from_pretrained(TESTBED_DIR / "unet", use_safetensors=True, low_cpu_mem_usage=False).eval()
    x = torch.randn(3, *testbed_model.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (999, 412, torch.tensor([3, 500, 998])):
            assert torch.equal(testbed_model.predict_noise(x, t), raw(x, t).sample)


def test_shapes_schedule_and_identity(testbed_model: UNet2DAdapter) -> None:
    from diffusers import DDPMScheduler

    assert isinstance(testbed_model, DiffusionAdapter) and testbed_model.kind == "unet2d"
    assert testbed_model.sample_shape == (1, 16, 16) and not testbed_model.conditional
    ref = DDPMScheduler.from_pretrained(TESTBED_DIR, subfolder="scheduler")
    assert testbed_model.num_train_timesteps == 1000 and testbed_model.prediction_type == "epsilon"
    assert torch.equal(testbed_model.alphas_cumprod, ref.alphas_cumprod.to(torch.float32))
    assert testbed_model.clip_sample is True and testbed_model.scheduler_config["_class_name"] == "DDPMScheduler"
    assert testbed_model.path == TESTBED_DIR.resolve()
    # the identity the shipped supernet is keyed by is unchanged: the file hash of unet/
    shipped = json.loads(next((TESTBED_DIR / SHIPPED_DIR).glob(f"*/{META_FILE}")).read_text())
    assert testbed_model.identity() == testbed_model.model_hash == model_hash(TESTBED_DIR) == shipped["model_hash"]
    x = torch.randn(2, 1, 16, 16)
    assert testbed_model.encode(x) is x and testbed_model.decode(x) is x  # pixel space
    assert testbed_model.example_condition(4) is None


def test_an_unconditional_model_refuses_a_condition(testbed_model: UNet2DAdapter) -> None:
    with pytest.raises(ConfigError, match="unconditional"):
        testbed_model.predict_noise(torch.zeros(1, 1, 16, 16), 10, condition=torch.zeros(1, 8))


def test_structure_blocks_and_temporal_pieces(testbed_model: UNet2DAdapter) -> None:
    model = testbed_model
    assert model.block_of("down_blocks.1.attentions.0.to_q") == "down_blocks.1"
    assert model.block_of("time_embedding.linear_1") == "time_embedding" and model.block_of("conv_in") == "conv_in"
    assert model.temporal_support() is None and model.time_embedding_block == "time_embedding"
    projections = model.temporal_projections()
    assert "mid_block.resnets.0.time_emb_proj" in projections and len(projections) == 11
    t = torch.tensor([7, 700])
    with torch.no_grad():
        emb = model.timestep_embedding(t)
        site, owner = next(iter(projections.items()))
        seen: list[torch.Tensor] = []
        handle = model.denoiser.get_submodule(site).register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model.predict_noise(torch.zeros(1, 1, 16, 16), 700)
        finally:
            handle.remove()
        assert torch.allclose(model.project_temporal(owner, emb)[1], seen[0][0], atol=1e-6)


def test_export_hooks_rebuild_the_architecture(testbed_model: UNet2DAdapter) -> None:
    config = testbed_model.config
    assert config["_class_name"] == "UNet2DModel"
    index = testbed_model.export_index()
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    rebuilt = UNet2DAdapter.from_config(config, testbed_model.scheduler_config)
    rebuilt.denoiser.load_state_dict(testbed_model.denoiser.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt.predict_noise(x, 300), testbed_model.predict_noise(x, 300))
    assert torch.equal(rebuilt.alphas_cumprod, testbed_model.alphas_cumprod)
    assert rebuilt.model_hash is None and rebuilt.path is None  # built in code: identified by its state dict


def test_bare_modules_become_adapters() -> None:
    unet = make_testbed(0).eval()
    wrapped = as_adapter(unet)
    assert isinstance(wrapped, UNet2DAdapter) and wrapped.denoiser is unet and not wrapped.has_schedule
    assert as_adapter(wrapped) is wrapped
    toy = as_adapter(toy_net(), TOY_SHAPE)
    assert isinstance(toy, ModuleAdapter) and toy.sample_shape == TOY_SHAPE
    x = torch.randn(2, *TOY_SHAPE)
    assert torch.equal(toy.predict_noise(x, 5), toy.denoiser(x, 5))  # a plain tensor output is the noise
    with pytest.raises(Exception, match="sample shape"):
        as_adapter(toy_net())
    with pytest.raises(Exception, match="no noise schedule"):
        toy.sampler()
    with pytest.raises(ConfigError, match="only a diffusers model can be exported"):
        toy.export_index()


def test_the_sampler_runs_any_schedule_it_is_given() -> None:
    model = random_testbed(0)
    other = NoiseSchedule(model.alphas_cumprod.flip(0).clamp(1e-4, 0.9999))
    a = model.sampler(4).sample([600, 0], 2, seed=1)
    b = Sampler(model, 4, schedule=other).sample([600, 0], 2, seed=1)
    assert a.shape == (2, 1, 16, 16) and not torch.equal(a, b)


def test_the_registry_refuses_an_unsupported_class_by_name(tmp_path: Path) -> None:
    root = tmp_path / "model"
    shutil.copytree(TESTBED_DIR, root, ignore=shutil.ignore_patterns(SHIPPED_DIR))
    checked = check_model_dir(root)
    assert checked.kind == "unet2d" and checked.conditional is False and checked.model_kind is UNET2D
    assert checked.denoiser_config["_class_name"] == "UNet2DModel" and checked.num_train_timesteps == 1000
    index = json.loads((root / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet3DConditionModel"]
    (root / "model_index.json").write_text(json.dumps(index))
    refused = r"unsupported model class 'UNet3DConditionModel' \(supported: UNet2DModel, UNet2DConditionModel"
    with pytest.raises(ModelLoadError, match=refused):
        load_model(root)
    index["unet"] = ["diffusers", "UNet2DConditionModel"]  # a supported class in another kind's pipeline
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="a DDPMPipeline cannot hold a UNet2DConditionModel"):
        check_model_dir(root)
    index["unet"] = ["diffusers", "UNet2DModel"]
    index["_class_name"] = "KandinskyPipeline"
    (root / "model_index.json").write_text(json.dumps(index))
    refused = r"unsupported pipeline class 'KandinskyPipeline' \(supported: DDPMPipeline, DDIMPipeline, StableDiff"
    with pytest.raises(ModelLoadError, match=refused):
        check_model_dir(root)
    index["_class_name"] = "DDPMPipeline"
    del index["unet"]
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="names no 'unet' or 'transformer' component"):
        check_model_dir(root)


def test_a_new_kind_registers_in_one_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind's directory rules come from its registration: the check accepts its class and reports its facts."""
    from supernet.models import kinds

    fake = ModelKind(
        name="fake-transformer",
        component="transformer",
        classes=("FakeTransformer2DModel",),
        schedulers=("DDPMScheduler",),
        adapter="supernet.models.unet2d:UNet2DAdapter",
        conditional=True,
        condition="classes",
    )
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    kinds.register_kind(fake)
    root = tmp_path / "fake"
    (root / "transformer").mkdir(parents=True)
    shutil.copytree(TESTBED_DIR / "scheduler", root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "FakeTransformer2DModel"]}))
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FakeTransformer2DModel"}))
    (root / "transformer" / "weights.safetensors").write_bytes(b"x")
    checked = check_model_dir(root)
    assert checked.kind == "fake-transformer" and checked.conditional is True and checked.condition == "classes"
    assert len(model_hash(root)) == 16  # the kind's component is what is hashed
    with pytest.raises(ValueError, match="already belong"):
        kinds.register_kind(ModelKind("other", "unet", ("UNet2DModel",), ("DDPMScheduler",), "x:Y"))
    with pytest.raises(ValueError, match="exactly when conditional"):
        ModelKind("vague", "unet", ("X",), ("DDPMScheduler",), "x:Y", conditional=True)


def test_the_directory_check_and_registry_import_without_torch() -> None:
    modules = [
        "supernet.models",
        "supernet.models.kinds",
        "supernet.models.directory",
        "supernet.models.registry",
        "supernet.zoo.modeldir",
        "supernet.progress",
        "supernet.identity",
    ]
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "from supernet.models import check_model_dir, TESTBED_DIR\n"
        "assert check_model_dir(TESTBED_DIR).kind == 'unet2d'\n"
        "heavy = sorted({'torch', 'diffusers', 'ray', 'fastapi'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
