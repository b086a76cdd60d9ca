"""Text-to-image latent diffusion in the Stable Diffusion layout: ``StableDiffusionPipeline`` directories.

The denoiser is the pipeline's ``UNet2DConditionModel`` (the quantizable tree); the CLIP text encoder and the VAE
stay in floating point, as in the papers: prompts are encoded once per job (diffusers' own ``encode_prompt``) and
samples are decoded by the VAE. Classifier-free guidance runs the unconditional (or negative) and the conditional
branch in one denoiser call, as diffusers does, so calibration observers see both. Any local checkpoint of this
layout loads the same way, safetensors only; nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import ConfigError, ModelLoadError
from supernet.conditioning import Conditioning, default_conditioning
from supernet.models.base import Condition, NoiseSchedule
from supernet.models.directory import ModelDir, model_hash
from supernet.models.kinds import STABLE_DIFFUSION
from supernet.models.latent import LatentPipelineAdapter, denoiser_config
from supernet.models.schedulers import scheduler_from_config, searched_scheduler_for
from supernet.models.unet_time import UNetTimeEmbedding

log = logging.getLogger(__name__)

#: The denoiser class of this kind.
CLASS_NAME = "UNet2DConditionModel"
PIPELINE_CLASS = "StableDiffusionPipeline"


@dataclass(frozen=True, eq=False)
class PromptCondition:
    """The condition of a batch of samples: encoded prompts, the prompt of each sample, the guidance.

    Attributes:
        embeds: ``(P, L, D)`` text-encoder hidden states of the prompts.
        negative: ``(1, L, D)`` hidden states of the negative (or empty) prompt; ``None`` when unguided.
        index: ``(n,)`` the prompt of each sample.
        guidance_scale: the classifier-free guidance scale (applied when ``negative`` is given).
    """

    embeds: torch.Tensor
    negative: torch.Tensor | None
    index: torch.Tensor
    guidance_scale: float

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, item: slice) -> PromptCondition:
        """The condition of a contiguous slice of the samples."""
        if not isinstance(item, slice):
            raise TypeError("a condition is sliced with a slice of its samples")
        return PromptCondition(self.embeds, self.negative, self.index[item], self.guidance_scale)

    @property
    def guided(self) -> bool:
        return self.negative is not None

    def hidden_states(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The encoder hidden states of the denoiser call: ``[negative; prompts]`` when guided (diffusers'
        order), else the prompts."""
        emb = self.embeds.to(device, dtype)[self.index.to(device)]
        if self.negative is None:
            return emb
        neg = self.negative.to(device, dtype).expand(emb.shape[0], -1, -1)
        return torch.cat([neg, emb])


def _pipeline_class() -> type:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline  # type: ignore[no-any-return]


class StableDiffusionAdapter(UNetTimeEmbedding, LatentPipelineAdapter):
    """A ``StableDiffusionPipeline`` (UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer).

    Before sampling, :meth:`configure` sets the job's prompts and guidance (at load, the model directory's own
    ``prompts.txt``/``tmpq.json`` when it ships them). Sample ``i`` draws the prompt
    :meth:`~supernet.conditioning.Conditioning.prompt_index` names.
    """

    kind = STABLE_DIFFUSION.name
    conditional = True
    export_parts = ("vae", "text_encoder", "tokenizer")

    def __init__(
        self,
        pipeline: Any,
        *,
        schedule: NoiseSchedule | None = None,
        path: str | Path | None = None,
        model_hash: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            pipeline.unet, schedule=schedule, path=path, model_hash=model_hash, scheduler_config=scheduler_config
        )
        self.pipeline = pipeline
        self.conditioning: Conditioning | None = None
        #: What :meth:`configure` warned about (e.g. prompts truncated to the tokenizer's length).
        self.warnings: list[str] = []
        self._embeds: torch.Tensor | None = None
        self._negative: torch.Tensor | None = None
        cfg = pipeline.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else (size[0], size[-1])
        self._shape = (int(cfg.in_channels), int(h), int(w))

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, checked: ModelDir, device: str | torch.device = "cpu") -> StableDiffusionAdapter:
        """Load the pipeline (safetensors only), FP32, eval mode, gradients off; conditioned on the directory's
        own prompts when it ships a ``prompts.txt``."""
        root = checked.path
        pipe = _load_pipeline(root, "the pipeline")
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.to(device)
        config = dict(checked.scheduler_config)
        schedule = NoiseSchedule.from_config({"clip_sample": False, **config})
        adapter = cls(
            pipe,
            schedule=schedule,
            path=root,
            model_hash=model_hash(root, STABLE_DIFFUSION),
            scheduler_config=config,
        )
        defaults = default_conditioning(root)
        if defaults is not None:
            adapter.configure(defaults)
        return adapter

    # --- the condition ------------------------------------------------------------------------------------------
    def configure(self, conditioning: Conditioning) -> None:
        """Condition every later sample on ``conditioning``: its prompts are encoded now, once, in FP."""
        pipe = self.pipeline
        texts = [*conditioning.prompts, *([conditioning.negative_prompt] if conditioning.negative_prompt else [])]
        self.warnings = [w for w in (self._truncation(p) for p in texts) if w]
        for warning in self.warnings:
            log.warning("%s", warning)
        with torch.no_grad():
            prompts = list(conditioning.prompts)
            embeds, negative = pipe.encode_prompt(
                prompts,
                self.device,
                1,
                conditioning.guided,
                negative_prompt=[conditioning.negative_prompt or ""] * len(prompts) if conditioning.guided else None,
            )
        self._embeds = embeds.detach().to(torch.float32)
        self._negative = negative[:1].detach().to(torch.float32) if conditioning.guided else None
        self.conditioning = conditioning

    def _truncation(self, prompt: str) -> str | None:
        tok = self.pipeline.tokenizer
        ids = tok(prompt, padding="longest", return_tensors="pt").input_ids
        if ids.shape[-1] > tok.model_max_length:
            return f"prompt {prompt[:40]!r} is longer than the tokenizer's {tok.model_max_length} tokens: truncated"
        return None

    def condition_for(self, n: int) -> PromptCondition:
        """The condition of ``n`` samples under the configured conditioning."""
        if self.conditioning is None or self._embeds is None:
            raise ConfigError("prompts", f"{self!r} has no prompts: configure it with the job's prompts first")
        index = torch.tensor(self.conditioning.prompt_index(n), dtype=torch.long)
        return PromptCondition(self._embeds, self._negative, index, self.conditioning.guidance_scale)

    def example_condition(self, batch: int) -> PromptCondition:
        """The empty prompt, unguided: a trace costs one denoiser call per sample (guidance doubles every
        candidate's cost alike)."""
        with torch.no_grad():
            embeds, _ = self.pipeline.encode_prompt([""], self.device, 1, False)
        return PromptCondition(embeds.to(torch.float32), None, torch.zeros(batch, dtype=torch.long), 1.0)

    # --- samples and noise ---------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def _predict(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition) -> torch.Tensor:
        if not isinstance(condition, PromptCondition):
            raise ConfigError("condition", f"expected a PromptCondition, got {type(condition).__name__}")
        if len(condition) != x_t.shape[0]:
            raise ConfigError("condition", f"{len(condition)} conditions for a batch of {x_t.shape[0]}")
        hidden = condition.hidden_states(x_t.device, x_t.dtype)
        if condition.guided:
            tt = torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 0 else t
            out = self.denoiser(torch.cat([x_t, x_t]), tt, encoder_hidden_states=hidden).sample
            uncond, cond = out.chunk(2)
            out = uncond + condition.guidance_scale * (cond - uncond)
        else:
            out = self.denoiser(x_t, t, encoder_hidden_states=hidden).sample
        if self.prediction_type == "v_prediction":
            out = self._v_to_eps(out, x_t, t)
        return out  # type: ignore[no-any-return]

    def _v_to_eps(self, v: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε from a v-prediction: ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t."""
        ac = self.alphas_cumprod.to(x_t.device)
        a = ac[t] if isinstance(t, int) else ac[t.to(x_t.device).long()]
        a = a.reshape(-1, *([1] * (x_t.dim() - 1))) if isinstance(a, torch.Tensor) and a.dim() > 0 else a
        return a**0.5 * v + (1.0 - a) ** 0.5 * x_t  # type: ignore[no-any-return]

    # --- export -----------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return denoiser_config(self.denoiser, CLASS_NAME)

    def export_index(self) -> dict[str, Any]:
        """``model_index.json`` of an export: a ``StableDiffusionPipeline`` (the exporter names the scheduler)."""
        return {
            "_class_name": PIPELINE_CLASS,
            "_diffusers_version": self.config.get("_diffusers_version", "unknown"),
            "unet": ["diffusers", CLASS_NAME],
            "vae": ["diffusers", type(self.pipeline.vae).__name__],
            "text_encoder": ["transformers", type(self.pipeline.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.pipeline.tokenizer).__name__],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
            "requires_safety_checker": False,
        }

    @classmethod
    def from_export(
        cls,
        root: Path,
        config: Mapping[str, Any],
        scheduler_config: Mapping[str, Any],
        manifest: Mapping[str, Any],
    ) -> StableDiffusionAdapter:
        """The export's pipeline: the FP components from ``root``, the UNet built from ``config`` (the loader
        installs its quantized weights), conditioned as the search was."""
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(dict(config))
        scheduler = scheduler_from_config(scheduler_config)
        pipe = _load_pipeline(root, "the export's pipeline", unet=unet, scheduler=scheduler)
        schedule = NoiseSchedule.from_config({"clip_sample": False, **scheduler_config})
        adapter = cls(pipe, schedule=schedule, path=root, model_hash=manifest.get("model_hash"))
        conditioning = manifest.get("conditioning")
        if conditioning:
            adapter.configure(Conditioning.from_dict(conditioning))
        return adapter

    def diffusers_pipeline(self, timesteps: Sequence[int], scheduler_config: Mapping[str, Any]) -> Any:
        """This ``StableDiffusionPipeline`` with a scheduler that runs ``timesteps`` whenever it is called without
        explicit ones (``num_inference_steps`` is then ignored): ``pipe(prompt, guidance_scale=..., generator=...)``
        samples the searched schedule with the quantized UNet through diffusers' own scheduler."""
        self.pipeline.scheduler = searched_scheduler_for(scheduler_config, timesteps)
        return self.pipeline

    def pipeline_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """The arguments of the diffusers pipeline call that draws samples ``0..n-1`` as :meth:`sampler` does: their
        prompts, the noise of ``seed``, the guidance and negative prompt."""
        from supernet.sampling import make_noise

        condition = self.condition_for(n)  # ConfigError when the model has no prompts
        configured = self.conditioning
        if configured is None:
            raise ConfigError("prompts", f"{self!r} has no prompts: configure it with the job's prompts first")
        negative = configured.negative_prompt
        return {
            "prompt": [configured.prompts[i] for i in condition.index.tolist()],
            "latents": make_noise(n, self.sample_shape, seed),
            "guidance_scale": condition.guidance_scale,
            "negative_prompt": [negative] * n if negative else None,
        }

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the pipeline as a diffusers directory (safetensors) that :func:`load_model` reads."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.pipeline.save_pretrained(out, safe_serialization=True)
        return out

    def components(self) -> dict[str, nn.Module]:
        """The floating-point components besides the denoiser (kept FP): VAE and text encoder."""
        return {"vae": self.pipeline.vae, "text_encoder": self.pipeline.text_encoder}


def _load_pipeline(root: Path, what: str, **components: Any) -> Any:
    """The ``StableDiffusionPipeline`` in ``root`` (safetensors only, no safety checker), with ``components`` given
    instead of loaded; every module in eval mode with gradients off. ModelLoadError naming ``what`` otherwise."""
    try:
        pipe = _pipeline_class().from_pretrained(  # type: ignore[attr-defined]
            root,
            **components,
            use_safetensors=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            low_cpu_mem_usage=False,
        )
    except Exception as exc:  # diffusers/transformers raise many types for a broken checkpoint
        raise ModelLoadError(root, f"{what} could not be loaded: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval().requires_grad_(False)
    return pipe


def conditions_of(prompts: Sequence[str], n: int, images_per_prompt: int = 1) -> list[str]:
    """The prompt of each of ``n`` samples (prompt-major, as :class:`Conditioning` lays them out)."""
    return [prompts[i] for i in Conditioning(tuple(prompts), 1.0, None, images_per_prompt).prompt_index(n)]
