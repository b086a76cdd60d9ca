"""The adapter contract: everything the rest of tmpq may know about a loaded diffusion model.

A :class:`DiffusionAdapter` wraps one loaded pipeline (or a bare denoiser module built in code). Sampling,
calibration, cost tracing, export and the evaluators talk only to it:

==========================  ===========================================================================================
the quantizable module tree ``denoiser`` (the supernet installs its quantized sites in it, in place)
noise prediction            ``predict_noise(x_t, t, condition)``: the one place the denoiser is called
samples                     ``sample_shape`` (latent shape for latent models), ``encode``/``decode`` (identity in pixel
                            space), ``condition_for(n)`` (``None`` for unconditional models), ``batches`` (stored
                            inputs with their conditions), ``example_condition`` for traces
the noise schedule          ``schedule`` (:class:`NoiseSchedule`: ᾱ_t, ``clip_sample``, prediction type, T),
                            ``scheduler_config``, ``sampler()``
structure                   ``block_of(site)`` (the blocks reconstruction iterates over), the time-embedding pieces
                            TFMQ-DM's temporal block and cache use (``temporal_support``, ``time_embedding_block``,
                            ``timestep_embedding``, ``temporal_projections``, ``project_temporal``)
identity                    ``path``, ``model_hash`` (file hash of a loaded directory), ``identity()``
export                      ``config`` (the denoiser's diffusers config), ``export_index()``, ``from_config(...)``
==========================  ===========================================================================================

Subclasses (one per pipeline kind, registered torch-free in :mod:`supernet.models.kinds`) fill small hooks:
``_predict`` (one denoiser call), ``load``, ``from_config``, ``sample_shape`` and, where they apply, the
time-embedding pieces and the export hooks.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from search.errors import ConfigError
from supernet.errors import CalibrationError

if TYPE_CHECKING:
    from supernet.models.directory import ModelDir
    from supernet.sampling import Sampler

#: What a model is conditioned on: ``None`` for unconditional models. A conditional adapter documents its own
#: (e.g. the prompt embeddings, computed once per prompt in FP, and the guidance scale).
Condition = Any

#: The keys of a diffusers scheduler config that determine its betas.
_BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """What sampling needs of a model's training noise schedule.

    Attributes:
        alphas_cumprod: ᾱ_t for t in ``[0, T)``, float32.
        clip_sample: clip the predicted x0 to [-1, 1] (the scheduler config's ``clip_sample``).
        prediction_type: what the denoiser outputs natively (``epsilon``); :meth:`DiffusionAdapter.predict_noise`
            always returns the noise.
    """

    alphas_cumprod: torch.Tensor
    clip_sample: bool = True
    prediction_type: str = "epsilon"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """The schedule of a DDPM-style scheduler config (ᾱ_t through diffusers' own scheduler, so every beta
        schedule matches)."""
        from diffusers import DDPMScheduler

        sched = DDPMScheduler(**{k: v for k, v in config.items() if k in _BETA_KEYS and v is not None})
        return cls(
            sched.alphas_cumprod.clone().to(torch.float32),
            bool(config.get("clip_sample", True)),
            str(config.get("prediction_type", "epsilon")),
        )


def module_hash(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) over a module's config (if any) and its state dict: the identity of a model built in
    code (a loaded directory is identified by its files, :func:`supernet.models.directory.model_hash`)."""
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def top_level_block(root: nn.Module, name: str) -> str:
    """The top-level unit a module called ``name`` belongs to: ``down_blocks.1``, ``mid_block``, ``conv_in``…
    (an item of a top-level list, or the top-level child itself)."""
    parts = name.split(".")
    child = root._modules.get(parts[0])
    if isinstance(child, nn.ModuleList | nn.ModuleDict | nn.Sequential) and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


class DiffusionAdapter(abc.ABC):
    """A loaded diffusion model, as the rest of tmpq sees it (see the module docstring).

    Args:
        denoiser: the noise-predicting module (the quantizable tree).
        schedule: the training noise schedule (``None`` for a bare module built in code: it cannot be sampled).
        path: the directory it was loaded from.
        model_hash: the directory's file hash (:func:`~supernet.models.directory.model_hash`).
        scheduler_config: the training scheduler's diffusers config.
    """

    #: The registered :class:`~supernet.models.kinds.ModelKind` name (empty for adapters of bare modules).
    kind: ClassVar[str] = ""
    #: Whether :meth:`predict_noise` needs a condition.
    conditional: ClassVar[bool] = False
    #: The block whose modules compute the time embedding from ``t`` alone (``None``: there is none).
    time_embedding_block: ClassVar[str | None] = None

    def __init__(
        self,
        denoiser: nn.Module,
        *,
        schedule: NoiseSchedule | None = None,
        path: str | Path | None = None,
        model_hash: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(denoiser, nn.Module):
            raise TypeError(f"the denoiser must be an nn.Module, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self._schedule = schedule
        self.path = Path(path) if path is not None else None
        self.model_hash = model_hash
        self.scheduler_config: dict[str, Any] = dict(scheduler_config or {})

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path is not None else ""
        return f"{type(self).__name__}({type(self.denoiser).__name__}{where})"

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def load(cls, checked: ModelDir, device: str | torch.device = "cpu") -> DiffusionAdapter:
        """Load the checked directory ``checked`` (eval mode, gradients off, on ``device``)."""

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        """Whether :meth:`from_module` can wrap ``module`` (a denoiser of this kind built in code)."""
        return False

    @classmethod
    def from_module(
        cls, module: nn.Module, *, schedule: NoiseSchedule | None = None, sample_shape: Sequence[int] | None = None
    ) -> DiffusionAdapter:
        """An adapter over a denoiser built in code (no files: identified by :func:`module_hash`)."""
        raise ConfigError("model", f"{cls.__name__} cannot wrap a {type(module).__name__} built in code")

    # --- identity -----------------------------------------------------------------------------------------------
    def identity(self) -> str:
        """What supernet artifacts are keyed by: the directory's file hash, else the denoiser's state-dict hash, and
        the :attr:`condition_key` of a conditional model (:func:`supernet.identity.conditioned_identity`)."""
        from supernet.identity import conditioned_identity

        return conditioned_identity(self.model_hash or module_hash(self.denoiser), self.condition_key)

    @property
    def condition_key(self) -> str | None:
        """The key of what the model is conditioned on (``None`` for an unconditional model)."""
        return None

    # --- samples --------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one input of the denoiser (the latent's shape for latent models)."""

    @property
    def device(self) -> torch.device:
        """Where the denoiser's parameters are."""
        return next(self.denoiser.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        """Move the model to ``device`` and cast the denoiser to the compute ``dtype`` (other components, such as a
        VAE or a text encoder, move but stay in their dtype). A supernet wrapping the denoiser moves with
        :meth:`~supernet.supernet.QuantSupernet.to` instead, which calls this."""
        self.denoiser.to(device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's compute dtype (its parameters' dtype)."""
        return next(self.denoiser.parameters()).dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the space the denoiser works in (identity for pixel-space models)."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's space back to images in [-1, 1] (identity for pixel-space models; a VAE for latent ones)."""
        return latents

    # --- noise prediction -----------------------------------------------------------------------------------
    def check_condition(self, condition: Condition) -> None:
        """Refuse a condition an unconditional model cannot take, or a missing one a conditional model needs."""
        if condition is not None and not self.conditional:
            raise ConfigError("condition", f"the model ({type(self).__name__}) is unconditional: it takes no condition")
        if condition is None and self.conditional:
            raise ConfigError("condition", f"the model ({type(self).__name__}) is conditional: it needs a condition")

    def condition_for(self, n: int) -> Condition:
        """The condition of ``n`` samples (sample ``i`` of every sample set gets the same one, so any prefix of a
        set keeps its conditions): ``None`` for unconditional models."""
        return None

    def batches(self, x: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, Condition]]:
        """``x`` (samples ``0..n-1`` of a set) in chunks of ``batch_size``, each with its samples' condition: what
        every caller of :meth:`predict_noise` on stored inputs (calibration) iterates over."""
        condition = self.condition_for(int(x.shape[0])) if self.conditional else None
        for start in range(0, int(x.shape[0]), batch_size):
            stop = start + batch_size
            yield x[start:stop], (condition[start:stop] if condition is not None else None)

    def example_condition(self, batch: int) -> Condition:
        """A condition for ``batch`` samples to trace the model with (cost tracing): ``None`` when unconditional."""
        return None

    def predict_noise(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition = None) -> torch.Tensor:
        """The predicted noise ε(x_t, t[, condition]) for a batch ``x_t`` at timestep ``t`` (an int, or one per
        sample), in the denoiser's dtype. This is the only place the denoiser is called: ``x_t`` (and a tensor ``t``)
        are moved to the denoiser's device and ``x_t`` cast to its dtype here, so callers keep their float32 state
        anywhere.

        Classifier-free guidance belongs to conditional adapters' :meth:`_predict`: for a condition carrying a
        guidance scale ``g``, the batch is doubled with the unconditional condition in one denoiser call (so the
        timestep hooks and calibration observers see both halves) and ``eps_u + g·(eps_c − eps_u)`` is returned,
        as diffusers' pipelines do (DESIGN.md §9). A v-prediction adapter converts to ε there too.
        """
        self.check_condition(condition)
        x_t = x_t.to(device=self.device, dtype=self.dtype)
        if isinstance(t, torch.Tensor):
            t = t.to(x_t.device)
        return self._predict(x_t, t, condition)

    @abc.abstractmethod
    def _predict(self, x_t: torch.Tensor, t: int | torch.Tensor, condition: Condition) -> torch.Tensor:
        """One call of the denoiser, returning ε."""

    # --- the noise schedule ---------------------------------------------------------------------------------
    @property
    def schedule(self) -> NoiseSchedule:
        """The training noise schedule; :class:`CalibrationError` for a bare module built without one."""
        if self._schedule is None:
            raise CalibrationError(f"{self!r} has no noise schedule (build it with one to sample)")
        return self._schedule

    @property
    def has_schedule(self) -> bool:
        return self._schedule is not None

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    @property
    def clip_sample(self) -> bool:
        return self.schedule.clip_sample

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def sampler(self, batch_size: int = 64, solver: str = "ddim") -> Sampler:
        """A :class:`~supernet.sampling.Sampler` over this model with ``solver`` (quantized or not: it calls the
        denoiser as it is now)."""
        from supernet.sampling import Sampler

        return Sampler(self, batch_size, solver=solver)

    # --- structure -------------------------------------------------------------------------------------------
    def block_of(self, name: str) -> str:
        """The block (a module name of the denoiser) that reconstruction trains the module ``name`` in: by default
        the top-level unit (:func:`top_level_block`)."""
        return top_level_block(self.denoiser, name)

    def layer_kind(self, name: str) -> str:
        """The kind of layer the site ``name`` is, for the search's ``kind`` granularity: ``attention`` (an
        attention's projections and matmuls), ``mlp`` (a feed-forward), ``modulation`` (what the timestep or class
        embedding computes or feeds: adaLN, time-embedding MLPs and projections, a DiT's final modulation), else
        ``other`` (convolutions, patch embedding, output projection). By the module names diffusers uses."""
        parts = name.split(".")
        if any(p.startswith("attn") for p in parts):
            return "attention"
        if "ff" in parts:
            return "mlp"
        embedding = {"emb", "time_embedding", "time_emb_proj", "timestep_embedder", "class_embedder", "proj_out_1"}
        if any(p in embedding or p.startswith("norm") for p in parts):
            return "modulation"
        if "attentions" in parts:
            return "attention"
        return "other"

    def temporal_support(self) -> str | None:
        """``None`` when the time-embedding pieces below apply (the temporal features depend on ``t`` only), else
        why not."""
        return "the model has no time embedding tmpq knows"

    def timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``h(t)`` per timestep: the time-embedding block's output for a batch of integer timesteps."""
        raise CalibrationError(self.temporal_support() or f"{self!r} has no time embedding")

    def temporal_projections(self) -> dict[str, nn.Module]:
        """``{projection module name: the block that owns it}`` for every projection of the time embedding into a
        block (a ResBlock's ``time_emb_proj``), in model order; empty when there are none."""
        return {}

    def project_temporal(self, owner: nn.Module, emb: torch.Tensor) -> torch.Tensor:
        """The temporal feature of ``owner`` from the time embedding ``emb``, as the model's forward computes it."""
        raise CalibrationError(self.temporal_support() or f"{self!r} has no temporal projections")

    # --- export ----------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The denoiser's diffusers config (with ``_class_name``), from which :meth:`from_config` rebuilds it."""
        raise ConfigError("model", f"only a diffusers model can be exported, not a {type(self.denoiser).__name__}")

    def export_index(self) -> dict[str, Any]:
        """The ``model_index.json`` of an export of this model (the denoiser's component, a DDIM scheduler)."""
        raise ConfigError("model", f"only a diffusers model can be exported, not a {type(self.denoiser).__name__}")

    def export_components(self, out_dir: Path) -> list[str]:
        """Write the model's floating-point components besides the denoiser (a VAE, a text encoder, a tokenizer)
        into an export directory, as the model directory has them; returns the files written, relative to
        ``out_dir``. A pixel-space unconditional model has none."""
        return []

    @classmethod
    def from_export(
        cls,
        root: Path,
        config: Mapping[str, Any],
        scheduler_config: Mapping[str, Any],
        manifest: Mapping[str, Any],
    ) -> DiffusionAdapter:
        """The model of an export directory with freshly initialised denoiser weights (the loader installs the
        stored ones): by default :meth:`from_config`; a pipeline with other components loads them from ``root``."""
        return cls.from_config(config, scheduler_config)

    def pipeline_inputs(self, n: int, seed: int) -> dict[str, Any]:
        """The keyword arguments of :meth:`diffusers_pipeline`'s call that draw samples ``0..n-1`` from the noise of
        ``seed`` as tmpq's sampler does (a conditional pipeline's subclasses)."""
        raise ConfigError("model", f"{type(self).__name__} has no diffusers pipeline to run: use its sampler")

    def diffusers_pipeline(self, timesteps: Sequence[int], scheduler_config: Mapping[str, Any]) -> Any:
        """A diffusers pipeline over this model that runs ``timesteps`` when called (see the subclasses)."""
        raise ConfigError("model", f"{type(self).__name__} has no diffusers pipeline to run: use its sampler")

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], scheduler_config: Mapping[str, Any] | None = None
    ) -> DiffusionAdapter:
        """The architecture of ``config`` with freshly initialised weights (eval mode, gradients off), and the
        schedule of ``scheduler_config`` (an export's loader then installs the stored weights)."""
        raise ConfigError("model", f"{cls.__name__} cannot be built from a config")


def as_adapter(model: DiffusionAdapter | nn.Module, sample_shape: Sequence[int] | None = None) -> DiffusionAdapter:
    """``model`` as an adapter: an adapter as it is; a bare denoiser module through the first registered kind that
    accepts it, else a :class:`~supernet.models.module.ModuleAdapter` (which needs ``sample_shape`` unless the
    module has a diffusers config)."""
    if isinstance(model, DiffusionAdapter):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a DiffusionAdapter or an nn.Module, got {type(model).__name__}")
    from supernet.models.module import ModuleAdapter
    from supernet.models.registry import adapter_classes

    for cls in adapter_classes():
        if cls.accepts(model):
            return cls.from_module(model, sample_shape=sample_shape)
    return ModuleAdapter(model, sample_shape=sample_shape)
