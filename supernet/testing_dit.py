"""A tiny random ``DiTPipeline`` directory, built in code: what tests and benchmarks use to exercise the
class-conditional transformer path on "any local checkpoint" without the shipped testbed (no download, a second of
CPU). Its weights are random from ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: The tiny pipeline's ``id2label``. Its label table has :data:`TINY_CLASS_EMBEDS` entries and the null class after
#: them, at index 1000, where stock ``DiTPipeline`` looks for it.
TINY_LABELS = {0: "square", 1: "circle", 2: "line, stroke"}
TINY_CLASS_EMBEDS = 1000


def tiny_dit_pipeline(
    root: str | Path,
    *,
    seed: int = 0,
    scheduler: str = "DDIMScheduler",
    learn_sigma: bool = False,
    id2label: dict[int, str] | None = TINY_LABELS,
    guidance_scale: float | None = 3.0,
) -> Path:
    """Write a random ``DiTPipeline`` (a two-block DiTTransformer2DModel on 4×8×8 latents, 2×2 patches, width 16 in
    two heads; a one-level AutoencoderKL on 3×8×8 images) to ``root``; with ``id2label`` in its
    ``model_index.json``, and with ``guidance_scale``, a ``tmpq.json`` beside it. ``learn_sigma``: the
    transformer also predicts the variance (8 output channels), as DiT's ImageNet checkpoints do."""
    import diffusers
    from diffusers import DiTPipeline, DiTTransformer2DModel

    from supernet.models.dit import write_id2label
    from supernet.testing_sd import tiny_vae

    root = Path(root)
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8 if learn_sigma else 4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=TINY_CLASS_EMBEDS,
    )
    vae = tiny_vae()
    sched_args: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }
    if scheduler == "DDIMScheduler":
        sched_args.update(clip_sample=False, set_alpha_to_one=False)
    sched = getattr(diffusers, scheduler)(**sched_args)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=sched).save_pretrained(root, safe_serialization=True)
    if id2label is not None:
        write_id2label(root, id2label)
    if guidance_scale is not None:
        (root / "tmpq.json").write_text(json.dumps({"guidance_scale": guidance_scale}))
    return root
