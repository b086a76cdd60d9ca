"""The class-conditional transformer testbed (models/digits-dit): the shipped directory loaded by stock diffusers,
its recorded class accuracy, and the training's determinism."""

from __future__ import annotations

import json

import pytest
import torch

from supernet.models import check_model_dir
from supernet.models.directory import DIGITS_DIT_DIR, DIGITS_SD_DIR
from supernet.zoo.digits_dit import DIGIT_LABELS, DITTrainSettings, train_digits_dit


@pytest.fixture(scope="module")
def pipe():
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(str(DIGITS_DIT_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_directory_is_small_safetensors_with_labels():
    files = [p for p in DIGITS_DIT_DIR.rglob("*") if p.is_file() and "tmpq-supernets" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 4 * 2**20
    weights = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".safetensors"}]
    assert {p.suffix for p in weights} == {".safetensors"}
    assert {p.parent.name for p in weights} == {"transformer", "vae"}
    index = json.loads((DIGITS_DIT_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline"
    assert index["id2label"] == {str(i): label for i, label in enumerate(DIGIT_LABELS)}
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # the text-to-image testbed's VAE
        assert (DIGITS_DIT_DIR / "vae" / name).read_bytes() == (DIGITS_SD_DIR / "vae" / name).read_bytes()
    info = check_model_dir(DIGITS_DIT_DIR)
    assert (info.kind, info.condition) == ("dit", "classes")


def test_the_recorded_class_accuracy_meets_the_bar():
    """Measured by ``tmpq zoo train-digits-dit`` (500 samples through stock DiTPipeline, the shipped classifier)."""
    record = json.loads((DIGITS_DIT_DIR / "tmpq.json").read_text())["class_accuracy"]
    assert record["n_per_class"] * 10 >= 500 and record["accuracy"] >= 0.9
    assert min(record["per_digit"]) >= 0.8


def test_stock_pipeline_draws_the_requested_digits(pipe):
    from supernet.models.directory import FEATURES_DIR
    from supernet.zoo.features import load_features

    assert pipe.labels["seven"] == 7 and pipe.transformer.dtype == torch.float32
    labels = pipe.get_label_ids(["zero", "three", "seven", "nine"])
    gen = torch.Generator().manual_seed(0)
    images = pipe(labels, num_inference_steps=25, guidance_scale=4.0, generator=gen, output_type="np").images
    assert images.shape == (4, 16, 16, 1)  # numpy, channels last
    predicted = load_features(FEATURES_DIR)(torch.from_numpy(images).permute(0, 3, 1, 2) * 2.0 - 1.0).argmax(1)
    assert predicted.tolist() == [0, 3, 7, 9]


def test_settings_are_validated():
    with pytest.raises(ValueError):
        DITTrainSettings(steps=0)


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    settings = DITTrainSettings(steps=3, batch_size=8, threads=1)
    first = train_digits_dit(tmp_path / "a", settings)
    second = train_digits_dit(tmp_path / "b", settings)
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(first / name)), load_file(str(second / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((first / "tmpq.json").read_text()) == json.loads((second / "tmpq.json").read_text())


def test_the_demo_job_finds_the_supernet_shipped_with_the_testbed():
    """``tmpq demo --model digits-dit`` (every class, its guidance, the default calibration) is keyed to the supernet
    in ``tmpq-supernets/``, so a fresh clone does not calibrate."""
    from server.demo import DEMO_DIT_JOB
    from supernet.artifact import META_FILE, SHIPPED_DIR
    from supernet.identity import supernet_artifact_name
    from supernet.models import model_hash
    from workers.jobspec import validate_job

    spec = validate_job(DEMO_DIT_JOB, DIGITS_DIT_DIR.parent)
    assert spec.model.classes == DIGIT_LABELS and spec.model.guidance_scale == 4.0
    assert spec.search.granularity == "kind"
    name = supernet_artifact_name(
        spec.model.path,
        spec.search.quantized_bits,
        spec.calibration,
        known_hash=model_hash(DIGITS_DIT_DIR),
        condition_key=spec.model.condition_key(),
    )
    shipped = DIGITS_DIT_DIR / SHIPPED_DIR / name
    assert (shipped / META_FILE).is_file(), sorted(p.name for p in (DIGITS_DIT_DIR / SHIPPED_DIR).iterdir())
    meta = json.loads((shipped / META_FILE).read_text())
    assert meta["model_hash"] == f"{model_hash(DIGITS_DIT_DIR)}.{spec.model.condition_key()}"
    assert meta["calibration_metadata"]["report"]["range_check"]["passed"] is True
