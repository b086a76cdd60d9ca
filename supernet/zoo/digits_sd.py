"""The text-to-image testbed: a tiny Stable-Diffusion-layout pipeline trained on the digits, reproducible from a seed.

``tmpq zoo train-digits-sd`` runs :func:`train_digits_sd` and writes ``models/digits-sd`` in diffusers'
``StableDiffusionPipeline`` layout (``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``; no safety
checker), so stock ``StableDiffusionPipeline.from_pretrained`` loads it. The prompts are
:data:`~supernet.zoo.digits_tokenizer.DIGIT_PROMPTS` ("a handwritten digit zero" ... "nine").

Training runs in two phases: the VAE (reconstruction + a small KL term) on the 16x16 digits, then the UNet
(epsilon prediction, prompt dropout for classifier-free guidance) on the frozen VAE's 4x8x8 latents, with the text
encoder trained jointly or kept at its seeded initialisation (:attr:`SDTrainSettings.train_text_encoder`).
:func:`prompt_accuracy` measures how often the shipped digits classifier names the digit a prompt asks for.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from supernet.conditioning import DEFAULTS_FILE, PROMPTS_FILE, model_defaults
from supernet.models.directory import DIGITS_SD_DIR
from supernet.zoo.determinism import deterministic_torch
from supernet.zoo.digits import IMAGE_SIZE, load_digits_tensor
from supernet.zoo.digits_tokenizer import (
    BOS_TOKEN,
    DIGIT_PROMPTS,
    EOS_TOKEN,
    MAX_LENGTH,
    build_vocabulary,
    prompt_words,
    write_tokenizer,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = [
    "DIGITS_SD_DIR",
    "DIGIT_PROMPTS",
    "SDTrainSettings",
    "load_digits_sd",
    "prompt_accuracies",
    "prompt_accuracy",
    "record_prompt_accuracy",
    "sampling_defaults",
    "train_digits_sd",
]

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 2

#: The VAE: 1x16x16 images in [-1, 1] <-> 4x8x8 latents (one downsample).
VAE_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": LATENT_CHANNELS,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

#: The denoiser: a two-level ``UNet2DConditionModel`` on the 8x8 latents, cross-attention at 8x8 and in the
#: 4x4 middle block.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,  # diffusers' legacy name: the number of heads (4 heads of 16 channels)
}

#: The text encoder: a two-layer ``CLIPTextModel`` (its vocabulary size comes from the tokenizer).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": MAX_LENGTH,
}

#: The training noise schedule and the sampler shipped with the pipeline: Stable Diffusion 1.x's DDIM settings.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0


@dataclass(frozen=True)
class SDTrainSettings:
    """Hyper-parameters of the reference run (both phases)."""

    vae_steps: int = 600
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-3
    unet_steps: int = 2000
    unet_batch_size: int = 32
    unet_lr: float = 2e-3
    weight_decay: float = 1e-4
    prompt_dropout: float = 0.1
    train_text_encoder: bool = True
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.vae_steps < 1 or self.unet_steps < 1:
            raise ValueError("vae_steps and unet_steps must be positive")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError("prompt_dropout must be in [0, 1)")


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Write the prompts' tokenizer files to ``directory`` and load them as a ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    write_tokenizer(directory)
    return CLIPTokenizer.from_pretrained(str(directory))


def build_components(seed: int = 0) -> tuple[AutoencoderKL, CLIPTextModel, UNet2DConditionModel, DDIMScheduler]:
    """The pipeline's VAE, text encoder, UNet (freshly initialised, deterministic from ``seed``) and scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, _ = build_vocabulary(prompt_words())
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
        **TEXT_ENCODER_CONFIG,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return vae, text_encoder, unet, DDIMScheduler(**SCHEDULER_CONFIG)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _train_vae(vae: AutoencoderKL, data: torch.Tensor, settings: SDTrainSettings, gen: torch.Generator) -> None:
    """Phase 1: reconstruction MSE + ``kl_weight`` x the KL divergence per latent element."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=settings.weight_decay)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.vae_lr, total_steps=settings.vae_steps)
    latent_elems = LATENT_CHANNELS * LATENT_SIZE * LATENT_SIZE
    start = time.perf_counter()
    for step in range(settings.vae_steps):
        x = data[torch.randint(0, data.shape[0], (settings.vae_batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / latent_elems
        loss = mse + settings.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if (step + 1) % 250 == 0 or step + 1 == settings.vae_steps:
            log.info(
                "vae step %d/%d mse %.4f kl %.3f (%.0f s)",
                step + 1,
                settings.vae_steps,
                mse.item(),
                kl.item(),
                time.perf_counter() - start,
            )
    vae.eval().requires_grad_(False)


@torch.no_grad()
def _encode_dataset(vae: AutoencoderKL, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean and standard deviation of every image's latent."""
    means, stds = [], []
    for chunk in data.split(256):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _prompt_ids(tokenizer: CLIPTokenizer) -> torch.Tensor:
    """Token ids of the ten prompts and the empty (unconditional) prompt, ``(11, MAX_LENGTH)``."""
    return tokenizer(
        [*DIGIT_PROMPTS, ""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def _train_unet(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    prompt_ids: torch.Tensor,
    latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scheduler: DDIMScheduler,
    settings: SDTrainSettings,
    gen: torch.Generator,
) -> None:
    """Phase 2: epsilon prediction on scaled latents; a prompt is replaced by "" with ``prompt_dropout``."""
    mean, std, labels = latents
    unet.train().requires_grad_(True)
    params = list(unet.parameters())
    if settings.train_text_encoder:
        text_encoder.train().requires_grad_(True)
        params += list(text_encoder.parameters())
    else:
        text_encoder.eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=settings.unet_lr, weight_decay=settings.weight_decay)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.unet_lr, total_steps=settings.unet_steps)
    acp = scheduler.alphas_cumprod
    n_train = scheduler.config.num_train_timesteps
    empty = len(DIGIT_PROMPTS)
    bsz = settings.unet_batch_size
    start = time.perf_counter()
    with torch.set_grad_enabled(True):
        frozen_embeds = None if settings.train_text_encoder else text_encoder(prompt_ids)[0].detach()
    for step in range(settings.unet_steps):
        idx = torch.randint(0, mean.shape[0], (bsz,), generator=gen)
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        cond = torch.where(torch.rand(bsz, generator=gen) < settings.prompt_dropout, empty, labels[idx])
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, n_train, (bsz,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        embeds = text_encoder(prompt_ids)[0] if frozen_embeds is None else frozen_embeds
        pred = unet(zt, t, encoder_hidden_states=embeds[cond]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if (step + 1) % 250 == 0 or step + 1 == settings.unet_steps:
            log.info(
                "unet step %d/%d loss %.4f (%.0f s)",
                step + 1,
                settings.unet_steps,
                loss.item(),
                time.perf_counter() - start,
            )
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


def train_digits_sd(out_dir: str | Path = DIGITS_SD_DIR, settings: SDTrainSettings = SDTrainSettings()) -> Path:
    """Train the text-to-image testbed deterministically and save it in ``StableDiffusionPipeline`` layout.

    Writes the pipeline (safetensors weights), ``prompts.txt`` and ``tmpq.json`` (sampling defaults, the training
    settings and the measured latent scaling factor) to ``out_dir``; returns it.
    """
    with deterministic_torch(settings.threads):
        return _train_digits_sd(Path(out_dir), settings)


def _train_digits_sd(out: Path, settings: SDTrainSettings) -> Path:
    start = time.perf_counter()
    data, labels = load_digits_tensor()
    vae, text_encoder, unet, scheduler = build_components(settings.seed)
    tok_dir = out / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tokenizer = build_tokenizer(tok_dir)
    log.info(
        "digits-sd: vae %d, text encoder %d, unet %d parameters",
        _n_params(vae),
        _n_params(text_encoder),
        _n_params(unet),
    )
    gen = torch.Generator().manual_seed(settings.seed)

    _train_vae(vae, data, settings, gen)
    mean, std = _encode_dataset(vae, data)
    with torch.no_grad():
        sampled = mean + std * torch.randn(mean.shape, generator=gen)
    scaling = round(1.0 / float(sampled.std()), 5)
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon_mse = float(F.mse_loss(vae.decode(mean).sample.clamp(-1, 1), data))
    log.info(
        "vae done after %.0f s: scaling factor %.5f, reconstruction mse %.4f",
        time.perf_counter() - start,
        scaling,
        recon_mse,
    )

    _train_unet(
        unet, text_encoder, _prompt_ids(tokenizer), (mean * scaling, std * scaling, labels), scheduler, settings, gen
    )
    train_seconds = time.perf_counter() - start

    save_sd_pipeline(out, vae, text_encoder, tokenizer, unet, scheduler)
    shutil.rmtree(tok_dir)  # our own vocab.json / merges.txt, whatever the installed transformers would write
    write_tokenizer(tok_dir)
    (out / PROMPTS_FILE).write_text("\n".join(DIGIT_PROMPTS) + "\n")
    record = {
        "default_steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE,
        "prompts_file": PROMPTS_FILE,
        "vae_scaling_factor": scaling,
        "vae_reconstruction_mse": round(recon_mse, 5),
        "train": asdict(settings),
    }
    (out / DEFAULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("saved the text-to-image testbed to %s after %.0f s of training", out, train_seconds)
    return out


def save_sd_pipeline(
    out: Path,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    scheduler: Any,
) -> None:
    """Save the components as a ``StableDiffusionPipeline`` directory (safetensors, no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def sampling_defaults(model_dir: str | Path = DIGITS_SD_DIR) -> tuple[int, float]:
    """The default (steps, guidance scale) recorded in the model's ``tmpq.json`` (the module's defaults if absent)."""
    record = model_defaults(model_dir)
    return int(record.get("default_steps", DEFAULT_STEPS)), float(record.get("guidance_scale", DEFAULT_GUIDANCE))


def load_digits_sd(model_dir: str | Path = DIGITS_SD_DIR) -> StableDiffusionPipeline:
    """The pipeline, loaded with stock ``StableDiffusionPipeline.from_pretrained``, progress bars off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def prompt_accuracies(
    pipe_or_dir: StableDiffusionPipeline | str | Path = DIGITS_SD_DIR,
    n_per_prompt: int = 50,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> list[float]:
    """Per digit, the fraction of the pipeline's samples for its prompt that the shipped digits classifier labels
    as that digit.

    Samples ``n_per_prompt`` images per prompt with the pipeline's own scheduler (``steps`` and ``guidance`` default
    to the model's ``tmpq.json``), in batches of ``batch_size`` prompts, noise from one CPU generator seeded ``seed``.
    """
    from supernet.zoo.features import digit_accuracies

    if isinstance(pipe_or_dir, str | Path):
        default_steps, default_guidance = sampling_defaults(pipe_or_dir)
        pipe = load_digits_sd(pipe_or_dir)
    else:
        default_steps, default_guidance = DEFAULT_STEPS, DEFAULT_GUIDANCE
        pipe = pipe_or_dir
    steps = default_steps if steps is None else steps
    guidance = default_guidance if guidance is None else guidance
    gen = torch.Generator().manual_seed(seed)

    def draw(digits: Sequence[int]) -> torch.Tensor:
        prompts = [DIGIT_PROMPTS[d] for d in digits]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt")
        return out.images  # type: ignore[no-any-return]

    per_digit = digit_accuracies(draw, n_per_prompt, batch_size, len(DIGIT_PROMPTS))
    log.info(
        "prompt accuracy %.4f over %d samples (%d steps, guidance %.1f): %s",
        sum(per_digit) / len(per_digit),
        n_per_prompt * len(per_digit),
        steps,
        guidance,
        " ".join(f"{d}:{a:.2f}" for d, a in enumerate(per_digit)),
    )
    return per_digit


def prompt_accuracy(
    pipe_or_dir: StableDiffusionPipeline | str | Path = DIGITS_SD_DIR,
    n_per_prompt: int = 50,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
) -> float:
    """The fraction of ``10 * n_per_prompt`` samples the digits classifier labels as the digit their prompt names
    (see :func:`prompt_accuracies`)."""
    per_digit = prompt_accuracies(pipe_or_dir, n_per_prompt, steps, guidance, seed)
    return sum(per_digit) / len(per_digit)


def record_prompt_accuracy(model_dir: str | Path = DIGITS_SD_DIR, n_per_prompt: int = 50, seed: int = 0) -> float:
    """Measure :func:`prompt_accuracy` at the model's default steps and guidance and record it (with the per-digit
    figures and how it was measured) under ``prompt_accuracy`` in the model's ``tmpq.json``; returns it."""
    path = Path(model_dir) / DEFAULTS_FILE
    record = json.loads(path.read_text())
    steps, guidance = sampling_defaults(model_dir)
    start = time.perf_counter()
    per_digit = prompt_accuracies(model_dir, n_per_prompt, steps, guidance, seed)
    accuracy = sum(per_digit) / len(per_digit)
    record["prompt_accuracy"] = {
        "accuracy": round(accuracy, 4),
        "per_digit": [round(a, 4) for a in per_digit],
        "n_per_prompt": n_per_prompt,
        "steps": steps,
        "guidance_scale": guidance,
        "seed": seed,
        "classifier": "models/digits-features",
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("prompt accuracy %.4f measured in %.0f s, recorded in %s", accuracy, time.perf_counter() - start, path)
    return accuracy
