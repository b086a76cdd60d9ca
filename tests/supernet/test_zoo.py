"""The loader accepts any local UNet2DModel diffusers directory and refuses everything else clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from search.errors import ModelLoadError
from supernet.models import TESTBED_DIR, check_model_dir, load_model
from supernet.zoo.features import FEATURES_DIR, load_features


def _copy_testbed(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(TESTBED_DIR, dst)
    return dst


def test_shipped_testbed_is_a_diffusers_pipeline():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(TESTBED_DIR, low_cpu_mem_usage=False)
    assert type(pipe.unet).__name__ == "UNet2DModel"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.scheduler.config.beta_schedule == "linear"
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    assert 0.8e6 < n_params < 1.5e6
    assert {"AttnDownBlock2D"} <= set(pipe.unet.config.down_block_types)
    assert {"AttnUpBlock2D"} <= set(pipe.unet.config.up_block_types)


def test_load_model_matches_diffusers(testbed_model):
    assert testbed_model.num_train_timesteps == 1000
    assert len(testbed_model.model_hash) == 16
    assert not any(p.requires_grad for p in testbed_model.denoiser.parameters())
    from diffusers import DDPMScheduler

    ref = DDPMScheduler.from_pretrained(TESTBED_DIR, subfolder="scheduler").alphas_cumprod
    assert torch.allclose(testbed_model.alphas_cumprod, ref)


def test_any_local_checkpoint_loads_the_same_way(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    sched = DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt")
    assert model.num_train_timesteps == 200
    assert torch.allclose(model.alphas_cumprod, sched.alphas_cumprod)
    images = model.sampler(batch_size=4).sample([150, 80, 0], n=2, seed=1)
    assert images.shape == (2, 3, 8, 8)


def test_missing_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("/nonexistent/model")


def test_file_is_not_a_directory(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        check_model_dir(f)


def test_directory_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match=r"not a diffusers directory: model_index.json is missing") as err:
        check_model_dir(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unsupported_model_class(tmp_path):
    root = _copy_testbed(tmp_path)
    index = json.loads((root / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet3DConditionModel"]
    (root / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="unsupported model class 'UNet3DConditionModel'"):
        load_model(root)


def test_only_safetensors_weights_are_loaded(tmp_path):
    root = _copy_testbed(tmp_path)
    for f in (root / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match=r"unet/ holds pickled weights .*only safetensors are loaded"):
        load_model(root)


def test_unsupported_prediction_type(tmp_path):
    root = _copy_testbed(tmp_path)
    cfg_path = root / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="prediction_type"):
        load_model(root)


def test_corrupt_weights(tmp_path):
    root = _copy_testbed(tmp_path)
    for f in (root / "unet").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(root)


def test_shipped_classifier_accuracy_is_recorded_and_true():
    from supernet.zoo.digits import load_digits_tensor, split_indices

    cfg = json.loads((FEATURES_DIR / "config.json").read_text())
    assert cfg["test_accuracy"] >= 0.97
    net = load_features()
    x, y = load_digits_tensor()
    _, test_idx = split_indices(len(x), seed=cfg["split_seed"])
    with torch.no_grad():
        acc = float((net(x[test_idx]).argmax(1) == y[test_idx]).float().mean())
    assert acc == pytest.approx(cfg["test_accuracy"], abs=1e-3)


def test_missing_feature_extractor(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_features(tmp_path)
