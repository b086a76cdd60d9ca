"""The class-conditional transformer testbed: a tiny ``DiTPipeline`` trained on the digits, reproducible from a seed.

``tmpq zoo train-digits-dit`` runs :func:`train_digits_dit` and writes ``models/digits-dit`` in diffusers'
``DiTPipeline`` layout (``transformer``, ``vae``, ``scheduler`` and ``id2label`` in ``model_index.json``), so stock
``DiTPipeline.from_pretrained`` loads it and samples a digit by its class label.

The VAE is the text-to-image testbed's (``models/digits-sd/vae``, frozen, copied file for file): the transformer
learns ε on its 4x8x8 latents, two-by-two patches (16 tokens), with the digit as the class label. The label table
has :data:`NUM_CLASS_EMBEDS` entries (and the null class after them), as DiT's ImageNet checkpoints do, because
diffusers' pipeline hard-codes the null class of classifier-free guidance at index 1000; only the first ten are
trained. diffusers' own label dropout (``class_dropout_prob`` 0.1 of every block's ``LabelEmbedding``) trains the
null class. :func:`class_accuracies` measures how often the shipped digits classifier names the requested digit.
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

from supernet.conditioning import DEFAULTS_FILE, model_defaults
from supernet.models.directory import DIGITS_DIT_DIR, DIGITS_SD_DIR
from supernet.models.dit import write_id2label
from supernet.zoo.determinism import deterministic_torch
from supernet.zoo.digits import load_digits_tensor

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DiTPipeline, DiTTransformer2DModel

__all__ = [
    "DIGIT_LABELS",
    "DITTrainSettings",
    "class_accuracies",
    "record_class_accuracy",
    "train_digits_dit",
]

log = logging.getLogger(__name__)

#: ``id2label`` of the testbed: class ``d`` is the digit ``d``.
DIGIT_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Label-table size: diffusers' ``DiTPipeline`` uses index 1000 as the null (unconditional) class.
NUM_CLASS_EMBEDS = 1000
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0


@dataclass(frozen=True)
class DITTrainSettings:
    """How the DiT testbed is trained (recorded in its ``tmpq.json``).

    Attributes:
        seed: seeds the initialisation, the batches, the noise and the label dropout.
        layers / heads / head_dim: the transformer's depth and attention width (hidden size ``heads * head_dim``).
        steps / batch_size / lr / weight_decay: AdamW with a one-cycle schedule on the ε-prediction loss.
        threads: torch threads while training (fixed, so that the result is the same on every machine of a kind).
    """

    seed: int = 0
    layers: int = 4
    heads: int = 4
    head_dim: int = 16
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "head_dim", "steps", "batch_size", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")


def build_transformer(settings: DITTrainSettings, latent_channels: int, latent_size: int) -> DiTTransformer2DModel:
    """The untrained transformer (seeded by ``settings.seed``)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(settings.seed)
    return DiTTransformer2DModel(
        num_attention_heads=settings.heads,
        attention_head_dim=settings.head_dim,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=settings.layers,
        sample_size=latent_size,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASS_EMBEDS,
    )


def _load_vae(sd_dir: Path) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sd_dir / "vae", use_safetensors=True, low_cpu_mem_usage=False)
    return vae.eval().requires_grad_(False)  # type: ignore[no-any-return]


@torch.no_grad()
def _latents(vae: AutoencoderKL, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit's scaled posterior mean and standard deviation."""
    scale = float(vae.config.scaling_factor)
    means, stds = [], []
    for chunk in data.split(256):
        dist = vae.encode(chunk).latent_dist
        means.append(dist.mean * scale)
        stds.append(dist.std * scale)
    return torch.cat(means), torch.cat(stds)


def _train(
    model: DiTTransformer2DModel,
    latents: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    acp: torch.Tensor,
    settings: DITTrainSettings,
) -> float:
    """ε-prediction on the latents; returns the last 100 steps' mean loss."""
    mean, std, labels = latents
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # the label dropout inside the model draws from the global generator
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=settings.steps)
    bsz, start, recent = settings.batch_size, time.perf_counter(), []
    for step in range(settings.steps):
        idx = torch.randint(0, mean.shape[0], (bsz,), generator=gen)
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, acp.shape[0], (bsz,), generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        pred = model((a.sqrt() * z0 + (1 - a).sqrt() * noise), timestep=t, class_labels=labels[idx]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent = [*recent[-99:], loss.item()]
        if (step + 1) % 500 == 0 or step + 1 == settings.steps:
            log.info(
                "dit step %d/%d loss %.4f (%.0f s)", step + 1, settings.steps, loss.item(), time.perf_counter() - start
            )
    model.eval().requires_grad_(False)
    return sum(recent) / len(recent)


def train_digits_dit(
    out_dir: str | Path = DIGITS_DIT_DIR,
    settings: DITTrainSettings = DITTrainSettings(),
    sd_dir: str | Path = DIGITS_SD_DIR,
) -> Path:
    """Train the DiT testbed deterministically on ``sd_dir``'s VAE latents and save it as a ``DiTPipeline``
    directory (safetensors), with a ``tmpq.json`` of its sampling defaults and training settings; returns it."""
    with deterministic_torch(settings.threads):
        return _train_digits_dit(Path(out_dir), settings, Path(sd_dir))


def _train_digits_dit(out: Path, settings: DITTrainSettings, sd_dir: Path) -> Path:
    from diffusers import DDIMScheduler, DiTPipeline

    start = time.perf_counter()
    data, labels = load_digits_tensor()
    vae = _load_vae(sd_dir)
    scheduler = DDIMScheduler.from_pretrained(sd_dir / "scheduler")
    mean, std = _latents(vae, data)
    model = build_transformer(settings, int(mean.shape[1]), int(mean.shape[-1]))
    log.info("digits-dit: transformer %d parameters", sum(p.numel() for p in model.parameters()))
    loss = _train(model, (mean, std, labels), scheduler.alphas_cumprod.to(torch.float32), settings)
    seconds = time.perf_counter() - start
    if out.exists():
        shutil.rmtree(out)
    pipe = DiTPipeline(transformer=model, vae=vae, scheduler=scheduler, id2label=dict(enumerate(DIGIT_LABELS)))
    pipe.save_pretrained(out, safe_serialization=True)
    write_id2label(out, dict(enumerate(DIGIT_LABELS)))
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # the VAE byte for byte, not re-serialised
        shutil.copy2(sd_dir / "vae" / name, out / "vae" / name)
    record = {
        "default_steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE,
        "vae": "models/digits-sd/vae",
        "final_loss": round(loss, 5),
        "train": asdict(settings),
    }
    (out / DEFAULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("saved the DiT testbed to %s after %.0f s (final loss %.4f)", out, seconds, loss)
    return out


def load_digits_dit(model_dir: str | Path = DIGITS_DIT_DIR) -> DiTPipeline:
    """The pipeline, loaded with stock ``DiTPipeline.from_pretrained``, progress bars off."""
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def class_accuracies(
    pipe_or_dir: DiTPipeline | str | Path = DIGITS_DIT_DIR,
    n_per_class: int = 50,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> list[float]:
    """Per digit, the fraction of the pipeline's samples of that class that the shipped digits classifier labels
    as that digit (stock ``DiTPipeline.__call__``, its own scheduler; ``steps`` and ``guidance`` default to the
    model's ``tmpq.json``; noise from one CPU generator seeded ``seed``)."""
    from supernet.zoo.features import digit_accuracies

    record: dict[str, Any] = {}
    if isinstance(pipe_or_dir, str | Path):
        record = model_defaults(pipe_or_dir)
        pipe = load_digits_dit(pipe_or_dir)
    else:
        pipe = pipe_or_dir
    steps = int(record.get("default_steps", DEFAULT_STEPS)) if steps is None else steps
    guidance = float(record.get("guidance_scale", DEFAULT_GUIDANCE)) if guidance is None else guidance
    gen = torch.Generator().manual_seed(seed)

    def draw(labels: Sequence[int]) -> torch.Tensor:
        out = pipe(list(labels), num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt")
        return out.images  # type: ignore[no-any-return]

    per_digit = digit_accuracies(draw, n_per_class, batch_size, len(DIGIT_LABELS))
    log.info(
        "class accuracy %.4f over %d samples (%d steps, guidance %.1f): %s",
        sum(per_digit) / len(per_digit),
        n_per_class * len(per_digit),
        steps,
        guidance,
        " ".join(f"{d}:{a:.2f}" for d, a in enumerate(per_digit)),
    )
    return per_digit


def record_class_accuracy(model_dir: str | Path = DIGITS_DIT_DIR, n_per_class: int = 50, seed: int = 0) -> float:
    """Measure :func:`class_accuracies` at the model's defaults and record it under ``class_accuracy`` in its
    ``tmpq.json``; returns the mean."""
    path = Path(model_dir) / DEFAULTS_FILE
    record = json.loads(path.read_text())
    per_digit = class_accuracies(model_dir, n_per_class, seed=seed)
    accuracy = sum(per_digit) / len(per_digit)
    record["class_accuracy"] = {
        "accuracy": round(accuracy, 4),
        "per_digit": [round(a, 4) for a in per_digit],
        "n_per_class": n_per_class,
        "steps": int(record.get("default_steps", DEFAULT_STEPS)),
        "guidance_scale": float(record.get("guidance_scale", DEFAULT_GUIDANCE)),
        "seed": seed,
        "classifier": "models/digits-features",
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return accuracy
