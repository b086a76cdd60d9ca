"""Class-conditional diffusion transformers: ``DiTPipeline`` directories (DiTTransformer2DModel + AutoencoderKL).

The denoiser is the pipeline's ``DiTTransformer2DModel`` (the quantizable tree: its patch embedding, every block's
attention projections, feed-forward and adaLN-Zero modulation with its own timestep and label embedders, both
attention matmuls, and the final modulation and projection); the VAE stays in floating point. The condition is a
class label: a job's classes are resolved to the ``id2label`` names of ``model_index.json``
(:func:`supernet.conditioning.resolve_classes`), and sample ``i`` draws class ``i % len(classes)``. Classifier-free
guidance runs the class and the null class (index ``num_embeds_ada_norm``, diffusers' 1000 for ImageNet DiTs) in
one denoiser call and guides the ε channels, as ``DiTPipeline`` does; a transformer that also predicts the variance
(``out_channels`` twice the latent channels) has it dropped. Any local checkpoint of
this layout loads the same way, safetensors only; nothing is ever downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.errors import ConfigError, ModelLoadError
from supernet.conditioning import Conditioning, class_ids, class_names, class_table, resolve_classes
from supernet.models.base import Condition, NoiseSchedule
from supernet.models.directory import ModelDir, model_hash
from supernet.models.kinds import DIT
from supernet.models.latent import LatentPipelineAdapter, denoiser_config
from supernet.models.schedulers import scheduler_from_config, searched_scheduler_for

#: The denoiser class of this kind.
CLASS_NAME = "DiTTransformer2DModel"
PIPELINE_CLASS = "DiTPipeline"


@dataclass(frozen=True, eq=False)
class ClassCondition:
    """The condition of a batch of samples: each sample's class id and the guidance.

    Attributes:
        labels: ``(n,)`` class ids.
        null_class: the id of the unconditional (dropped) label.
        guidance_scale: classifier-free guidance scale (guided when ``> 1``, as ``DiTPipeline``).
    """

    labels: torch.Tensor
    null_class: int
    guidance_scale: float

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, item: slice) -> ClassCondition:
        """The condition of a contiguous slice of the samples."""
        if not isinstance(item, slice):
            raise TypeError("a condition is sliced with a slice of its samples")
        return ClassCondition(self.labels[item], self.null_class, self.guidance_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


class DiTAdapter(LatentPipelineAdapter):
    """A ``DiTPipeline`` (DiTTransformer2DModel + AutoencoderKL), conditioned on class labels.

    Before sampling, :meth:`configure` sets the job's classes and guidance (at load: every class of the model at
    the guidance of its ``tmpq.json``, else 4.0). Its blocks for reconstruction are the top-level units:
    ``pos_embed``, ``transformer_blocks.i``, ``proj_out_1``, ``proj_out_2``.
    """

    kind = DIT.name
    conditional = True

    def __init__(
        self,
        pipeline: Any,
        *,
        schedule: NoiseSchedule | None = None,
        path: str | Path | None = None,
        model_hash: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        classes: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(
            pipeline.transformer,
            schedule=schedule,
            path=path,
            model_hash=model_hash,
            scheduler_config=scheduler_config,
        )
        self.pipeline = pipeline
        cfg = pipeline.transformer.config
        if cfg.num_embeds_ada_norm is None or cfg.norm_type != "ada_norm_zero":
            raise ConfigError(
                "model", "a DiT transformer must be class-conditional (ada_norm_zero, num_embeds_ada_norm)"
            )
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.classes: dict[int, str] = dict(classes) if classes else {i: str(i) for i in range(self.num_classes)}
        self.conditioning: Conditioning | None = None
        self._ids: torch.Tensor | None = None
        self._shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, checked: ModelDir, device: str | torch.device = "cpu") -> DiTAdapter:
        """Load the pipeline (safetensors only), FP32, eval mode, gradients off, conditioned on every class."""
        root = checked.path
        pipe = _load_pipeline(root, "the pipeline")
        for part in (pipe.transformer, pipe.vae):
            part.to(device)
        config = dict(checked.scheduler_config)
        adapter = cls(
            pipe,
            schedule=NoiseSchedule.from_config({"clip_sample": False, **config}),
            path=root,
            model_hash=model_hash(root, DIT),
            scheduler_config=config,
            classes=class_table(root),
        )
        adapter.configure(resolve_classes(root, None, None, 1))
        return adapter

    # --- the condition ------------------------------------------------------------------------------------------
    def configure(self, conditioning: Conditioning) -> None:
        """Condition every later sample on ``conditioning``, whose prompts are class labels (or ids)."""
        ids = class_ids(conditioning.prompts, self.classes)
        bad = [i for i in ids if not 0 <= i < self.num_classes]
        if bad:
            raise ConfigError("classes", f"class {bad[0]} is outside the model's {self.num_classes} classes")
        self._ids = torch.tensor(ids, dtype=torch.long)
        self.conditioning = conditioning

    def condition_for(self, n: int) -> ClassCondition:
        """The condition of ``n`` samples under the configured classes."""
        if self.conditioning is None or self._ids is None:
            raise ConfigError("classes", f"{self!r} has no classes: configure it with the job's classes first")
        index = torch.tensor(self.conditioning.prompt_index(n), dtype=torch.long)
        return ClassCondition(self._ids[index], self.num_classes, self.conditioning.guidance_scale)

    def example_condition(self, batch: int) -> ClassCondition:
        """Class 0, unguided: a trace costs one denoiser call per sample."""
        return ClassCondition(torch.zeros(batch, dtype=torch.long), self.num_classes, 1.0)

    # --- samples and noise ---------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def _predict(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition) -> torch.Tensor:
        if not isinstance(condition, ClassCondition):
            raise ConfigError("condition", f"expected a ClassCondition, got {type(condition).__name__}")
        n = int(x_t.shape[0])
        if len(condition) != n:
            raise ConfigError("condition", f"{len(condition)} conditions for a batch of {n}")
        labels = condition.labels.to(x_t.device)
        tt = t.to(x_t.device).reshape(-1) if isinstance(t, torch.Tensor) else torch.tensor([int(t)], device=x_t.device)
        tt = tt.expand(n) if tt.numel() == 1 else tt
        channels = self._shape[0]
        if condition.guided:
            null = torch.full_like(labels, condition.null_class)
            out = self.denoiser(
                torch.cat([x_t, x_t]), timestep=torch.cat([tt, tt]), class_labels=torch.cat([labels, null])
            )
            cond, uncond = out.sample[:, :channels].chunk(2)
            return uncond + condition.guidance_scale * (cond - uncond)  # type: ignore[no-any-return]
        out = self.denoiser(x_t, timestep=tt, class_labels=labels)
        return out.sample[:, :channels]  # type: ignore[no-any-return]

    # --- export -----------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return denoiser_config(self.denoiser, CLASS_NAME)

    def export_index(self) -> dict[str, Any]:
        """``model_index.json`` of an export: a ``DiTPipeline`` with the model's ``id2label``."""
        return {
            "_class_name": PIPELINE_CLASS,
            "_diffusers_version": self.config.get("_diffusers_version", "unknown"),
            DIT.component: ["diffusers", CLASS_NAME],
            "vae": ["diffusers", type(self.pipeline.vae).__name__],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "id2label": self._id2label(),
        }

    def _id2label(self) -> dict[str, str]:
        """The model directory's ``id2label`` (every comma-separated name of a class), else the class labels."""
        names = class_names(self.path) if self.path is not None else {}
        if names:
            return {str(i): ", ".join(aliases) for i, aliases in names.items()}
        return {str(i): label for i, label in self.classes.items()}

    @classmethod
    def from_export(
        cls,
        root: Path,
        config: Mapping[str, Any],
        scheduler_config: Mapping[str, Any],
        manifest: Mapping[str, Any],
    ) -> DiTAdapter:
        """The export's pipeline: the FP VAE from ``root``, the transformer built from ``config`` (the loader
        installs its quantized weights), conditioned on the classes the search was."""
        from diffusers import DiTTransformer2DModel

        transformer = DiTTransformer2DModel.from_config(dict(config))
        scheduler = scheduler_from_config(scheduler_config)
        pipe = _load_pipeline(root, "the export's pipeline", transformer=transformer, scheduler=scheduler)
        schedule = NoiseSchedule.from_config({"clip_sample": False, **scheduler_config})
        adapter = cls(
            pipe, schedule=schedule, path=root, model_hash=manifest.get("model_hash"), classes=class_table(root)
        )
        conditioning = manifest.get("conditioning")
        adapter.configure(
            Conditioning.from_dict(conditioning) if conditioning else resolve_classes(root, None, None, 1)
        )
        return adapter

    def diffusers_pipeline(self, timesteps: Sequence[int], scheduler_config: Mapping[str, Any]) -> Any:
        """This ``DiTPipeline`` with a scheduler that runs ``timesteps`` whenever it is called:
        ``pipe(class_labels, guidance_scale=..., generator=...)`` samples the searched schedule with the quantized
        transformer through diffusers' own scheduler."""
        self.pipeline.scheduler = searched_scheduler_for(scheduler_config, timesteps)
        return self.pipeline

    def pipeline_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """The arguments of the ``DiTPipeline`` call that draws samples ``0..n-1`` as :meth:`sampler` does: their
        class ids, a generator of ``seed`` (the pipeline draws the same noise as
        :func:`~supernet.sampling.make_noise`) and the guidance."""
        condition = self.condition_for(n)
        return {
            "class_labels": condition.labels.tolist(),
            "generator": torch.Generator().manual_seed(int(seed)),
            "guidance_scale": condition.guidance_scale,
        }

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the pipeline as a diffusers directory (safetensors, ``id2label`` in ``model_index.json``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.pipeline.save_pretrained(out, safe_serialization=True)
        write_id2label(out, {int(k): v for k, v in self._id2label().items()})
        return out


def write_id2label(out: Path, classes: Mapping[int, str]) -> None:
    """``id2label`` in a pipeline directory's ``model_index.json``, where diffusers' DiT checkpoints keep it (the
    pipeline's init reads it from there; its ``save_pretrained`` does not write it)."""
    path = Path(out) / "model_index.json"
    index = json.loads(path.read_text())
    index["id2label"] = {str(i): label for i, label in classes.items()}
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _load_pipeline(root: Path, what: str, **components: Any) -> Any:
    """The ``DiTPipeline`` in ``root`` (safetensors only), with ``components`` given instead of loaded; every
    module in eval mode with gradients off. ModelLoadError naming ``what`` otherwise."""
    from diffusers import DiTPipeline

    try:
        pipe = DiTPipeline.from_pretrained(root, **components, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as exc:  # diffusers raises many types for a broken checkpoint
        raise ModelLoadError(root, f"{what} could not be loaded: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.transformer, pipe.vae):
        part.eval().requires_grad_(False)
    return pipe
