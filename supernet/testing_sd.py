"""A tiny random Stable Diffusion pipeline directory, built in code: what tests and benchmarks use to exercise the
text-to-image path on "any local checkpoint" without the shipped testbed (no download, a second of CPU).

Its tokenizer is a minimal CLIP BPE vocabulary (the special tokens and single characters, no merges), so any prompt
tokenizes; its weights are random from ``seed``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

#: Prompts a tiny pipeline is conditioned on by default (its ``prompts.txt``).
TINY_PROMPTS = ("a red square", "a blue circle", "a green line")


def _write_tokenizer(folder: Path, max_length: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + "'.,!?-")
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def tiny_vae() -> AutoencoderKL:
    """A random one-level ``AutoencoderKL`` between 3×8×8 images and 4×8×8 latents (seeded by the caller)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=8,
        sample_size=8,
    )


def tiny_sd_pipeline(
    root: str | Path,
    *,
    seed: int = 0,
    prediction_type: str = "epsilon",
    scheduler: str = "DDIMScheduler",
    prompts: tuple[str, ...] | None = TINY_PROMPTS,
    guidance_scale: float | None = 3.0,
) -> Path:
    """Write a random ``StableDiffusionPipeline`` (UNet2DConditionModel with cross-attention on 4×8×8 latents, a
    one-level AutoencoderKL on 3×8×8 images, a one-layer CLIP text encoder, a character tokenizer) to ``root``;
    with ``prompts``, its ``prompts.txt`` (and ``tmpq.json`` guidance) beside it."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from supernet.zoo.digits_sd import save_sd_pipeline

    root = Path(root)
    max_length = 16
    _write_tokenizer(root / "tokenizer", max_length)
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    sched_args: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "steps_offset": 1,
    }
    if scheduler == "DDIMScheduler":
        sched_args.update(clip_sample=False, set_alpha_to_one=False)
    sched = getattr(diffusers, scheduler)(**sched_args)
    save_sd_pipeline(root, vae, text_encoder, tokenizer, unet, sched)
    if prompts is not None:
        (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    if guidance_scale is not None:
        (root / "tmpq.json").write_text(json.dumps({"guidance_scale": guidance_scale}))
    return root
