"""The text-to-image testbed (models/digits-sd): its tokenizer, the shipped directory loaded by stock diffusers, and
the training's determinism."""

from __future__ import annotations

import json

import pytest
import torch

from supernet.zoo.digits_sd import DIGITS_SD_DIR, SDTrainSettings, sampling_defaults, train_digits_sd
from supernet.zoo.digits_tokenizer import (
    BOS_TOKEN,
    DIGIT_PROMPTS,
    DIGIT_WORDS,
    END_OF_WORD,
    EOS_TOKEN,
    MAX_LENGTH,
    build_vocabulary,
    prompt_words,
    write_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(directory)
    return CLIPTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(DIGITS_SD_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_prompts_name_the_digits_in_order():
    assert len(DIGIT_PROMPTS) == 10
    for prompt, word in zip(DIGIT_PROMPTS, DIGIT_WORDS, strict=True):
        assert prompt == f"a handwritten digit {word}"


def test_every_prompt_word_is_one_token():
    vocab, merges = build_vocabulary(prompt_words())
    assert len(set(vocab.values())) == len(vocab) == max(vocab.values()) + 1
    for word in prompt_words():
        assert word + END_OF_WORD in vocab
    assert all(a + b in vocab for a, b in merges)


@pytest.mark.parametrize("tokenizer_source", ["written", "shipped"])
def test_prompts_round_trip_as_whole_words(tokenizer, tokenizer_source):
    from transformers import CLIPTokenizer

    tok = (
        tokenizer if tokenizer_source == "written" else CLIPTokenizer.from_pretrained(str(DIGITS_SD_DIR / "tokenizer"))
    )
    assert tok.model_max_length == MAX_LENGTH
    for prompt in DIGIT_PROMPTS:
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length).input_ids
        tokens = tok.convert_ids_to_tokens(ids)
        words = [w + END_OF_WORD for w in prompt.split()]
        assert tokens == [BOS_TOKEN, *words, EOS_TOKEN] + [EOS_TOKEN] * (MAX_LENGTH - len(words) - 2)
        assert tok.unk_token_id not in ids[1 : len(words) + 1]
        assert tok.decode(ids, skip_special_tokens=True) == prompt


def test_case_and_spacing_do_not_change_the_tokens(tokenizer):
    assert tokenizer("A  Handwritten DIGIT Seven").input_ids == tokenizer(DIGIT_PROMPTS[7]).input_ids


@pytest.mark.parametrize("text", ["a handwritten digit eleven", "a cat", "digit 42", "café ☃", "zero!?"])
def test_unknown_text_falls_back_to_bytes(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # every byte has a token: nothing is lost
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_shipped_directory_is_small_safetensors_with_defaults():
    files = [p for p in DIGITS_SD_DIR.rglob("*") if p.is_file() and "tmpq-supernets" not in p.parts]
    assert sum(p.stat().st_size for p in files) < 6 * 2**20
    weights = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".safetensors"}]
    assert {p.suffix for p in weights} == {".safetensors"}
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    index = json.loads((DIGITS_SD_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    assert (DIGITS_SD_DIR / "prompts.txt").read_text().splitlines() == list(DIGIT_PROMPTS)
    steps, guidance = sampling_defaults(DIGITS_SD_DIR)
    assert steps >= 10 and guidance > 1.0
    sched = json.loads((DIGITS_SD_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert sched["num_train_timesteps"] == 1000 and sched["prediction_type"] == "epsilon"


def test_stock_pipeline_loads_without_warnings(capfd):
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(str(DIGITS_SD_DIR))
    err = capfd.readouterr().err.lower()
    assert "safety" not in err and "error" not in err and "missing" not in err and "unexpected" not in err


def test_stock_pipeline_components(pipe):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the trained VAE, not SD's constant
    assert pipe.unet.dtype == torch.float32


def test_stock_pipeline_draws_digits(pipe):
    gen = torch.Generator().manual_seed(0)
    out = pipe(list(DIGIT_PROMPTS[:3]), num_inference_steps=4, guidance_scale=4.0, generator=gen, output_type="pt")
    images = out.images
    assert images.shape == (3, 1, 16, 16)
    assert torch.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 0.05  # not a blank canvas
    again = pipe(
        list(DIGIT_PROMPTS[:3]),
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert torch.equal(images, again)


def test_settings_are_validated():
    with pytest.raises(ValueError):
        SDTrainSettings(unet_steps=0)
    with pytest.raises(ValueError):
        SDTrainSettings(prompt_dropout=1.0)


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    settings = SDTrainSettings(vae_steps=3, unet_steps=3, vae_batch_size=8, unet_batch_size=8, threads=1)
    first = train_digits_sd(tmp_path / "a", settings)
    second = train_digits_sd(tmp_path / "b", settings)
    for component, name in [
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ]:
        a, b = load_file(str(first / component / name)), load_file(str(second / component / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), component
    assert json.loads((first / "tmpq.json").read_text()) == json.loads((second / "tmpq.json").read_text())


def test_the_demo_job_finds_the_supernet_shipped_with_the_testbed():
    """``tmpq demo --model digits-sd`` (its prompts.txt, guidance and the default calibration) is keyed to the
    supernet in ``tmpq-supernets/``, so a fresh clone does not calibrate."""
    from server.demo import DEMO_T2I_JOB
    from supernet.artifact import META_FILE, SHIPPED_DIR
    from supernet.identity import supernet_artifact_name
    from supernet.models import model_hash
    from workers.jobspec import validate_job

    spec = validate_job(DEMO_T2I_JOB, DIGITS_SD_DIR.parent)
    assert spec.model.prompts == DIGIT_PROMPTS and spec.model.guidance_scale == sampling_defaults()[1]
    name = supernet_artifact_name(
        spec.model.path,
        spec.search.quantized_bits,
        spec.calibration,
        known_hash=model_hash(DIGITS_SD_DIR),
        condition_key=spec.model.condition_key(),
    )
    shipped = DIGITS_SD_DIR / SHIPPED_DIR / name
    assert (shipped / META_FILE).is_file(), sorted(p.name for p in (DIGITS_SD_DIR / SHIPPED_DIR).iterdir())
    identity = f"{model_hash(DIGITS_SD_DIR)}.{spec.model.condition_key()}"  # the weights and the conditioning
    assert json.loads((shipped / META_FILE).read_text())["model_hash"] == identity
