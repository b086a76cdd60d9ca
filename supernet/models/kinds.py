"""The pipeline kinds the model seam supports, described without torch: one :class:`ModelKind` per adapter.

A kind says which diffusers directories it loads (the ``model_index.json`` component of its denoiser and that
component's classes, the schedulers, the prediction types), whether its model takes a condition, which components
its identity hashes, and where its adapter class lives (imported only when a model of the kind is loaded). The
directory check (:mod:`supernet.models.directory`), the loader (:mod:`supernet.models.registry`) and the server all
read these rules, so a new adapter registers its kind here, in one place, and every check follows.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The DDPM-family training schedulers whose betas the DDIM sampler can run.
DDPM_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDPMParallelScheduler")
#: The discrete-time schedulers a text-to-image pipeline may ship with: their betas define ᾱ_t the same way, and
#: tmpq's own solvers (DDIM, DPM-Solver++(2M)) sample on them.
LATENT_SCHEDULERS = (
    *DDPM_SCHEDULERS,
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
)


#: What a model can be conditioned on: nothing, prompts (text-to-image), class labels (class-conditional).
CONDITIONS = ("", "prompts", "classes")


@dataclass(frozen=True)
class ModelKind:
    """One kind of diffusers pipeline and its adapter.

    Attributes:
        name: short name recorded in checked directories (``"unet2d"``).
        component: the ``model_index.json`` entry (and sub-directory) of the denoiser, e.g. ``"unet"``.
        classes: the denoiser classes of this kind (``model_index.json`` and the component's ``config.json``).
        schedulers: the training scheduler classes accepted.
        prediction_types: what the denoiser predicts (``epsilon``; ``v_prediction`` once an adapter converts it).
        conditional: whether the model takes a condition (prompts, class labels).
        condition: what a conditional model is conditioned on: ``"prompts"`` (text) or ``"classes"`` (class labels);
            empty for an unconditional model.
        hashed: the components whose ``config.json`` and safetensors files make the model's identity, in order.
        adapter: ``"module:Class"`` of the adapter (a :class:`supernet.models.base.DiffusionAdapter`).
        pipelines: the ``model_index.json`` ``_class_name`` values of this kind's pipelines.
        required: the other components the pipeline needs (each a sub-directory with its files), e.g. the VAE.
        fp_components: the components with weights that stay in floating point (not quantized), e.g. the VAE.
    """

    name: str
    component: str
    classes: tuple[str, ...]
    schedulers: tuple[str, ...]
    adapter: str
    prediction_types: tuple[str, ...] = ("epsilon",)
    conditional: bool = False
    hashed: tuple[str, ...] = ()
    pipelines: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    fp_components: tuple[str, ...] = ()
    condition: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.component or not self.classes or ":" not in self.adapter:
            raise ValueError(f"incomplete model kind {self!r}")
        if self.condition not in CONDITIONS or bool(self.condition) != self.conditional:
            raise ValueError(
                f"model kind {self.name!r}: condition must be one of {CONDITIONS[1:]} exactly when conditional"
            )
        if not self.hashed:
            object.__setattr__(self, "hashed", (self.component,))


#: Today's kind: an unconditional pixel-space ``UNet2DModel`` (DDPMPipeline / DDIMPipeline).
UNET2D = ModelKind(
    name="unet2d",
    component="unet",
    classes=("UNet2DModel",),
    schedulers=DDPM_SCHEDULERS,
    adapter="supernet.models.unet2d:UNet2DAdapter",
    pipelines=("DDPMPipeline", "DDIMPipeline"),
)

#: Text-to-image latent diffusion in the Stable Diffusion layout: a ``UNet2DConditionModel`` with cross-attention
#: on CLIP text embeddings, an ``AutoencoderKL`` and the CLIP tokenizer (StableDiffusionPipeline).
STABLE_DIFFUSION = ModelKind(
    name="stable-diffusion",
    component="unet",
    classes=("UNet2DConditionModel",),
    schedulers=LATENT_SCHEDULERS,
    adapter="supernet.models.sd:StableDiffusionAdapter",
    prediction_types=("epsilon", "v_prediction"),
    conditional=True,
    condition="prompts",
    hashed=("unet", "text_encoder", "tokenizer"),
    pipelines=("StableDiffusionPipeline",),
    required=("vae", "text_encoder", "tokenizer"),
    fp_components=("text_encoder", "vae"),
)

#: Class-conditional latent diffusion transformers: a ``DiTTransformer2DModel`` (adaLN-Zero blocks conditioned on the
#: timestep and a class label) and an ``AutoencoderKL`` (DiTPipeline, labels in ``model_index.json``'s ``id2label``).
DIT = ModelKind(
    name="dit",
    component="transformer",
    classes=("DiTTransformer2DModel",),
    schedulers=LATENT_SCHEDULERS,
    adapter="supernet.models.dit:DiTAdapter",
    conditional=True,
    condition="classes",
    hashed=("transformer",),
    pipelines=("DiTPipeline",),
    required=("vae",),
    fp_components=("vae",),
)

_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Make ``kind`` loadable; a denoiser class may belong to one kind only."""
    for other in _KINDS.values():
        shared = set(other.classes) & set(kind.classes)
        if other.name != kind.name and other.component == kind.component and shared:
            raise ValueError(f"model class(es) {sorted(shared)} already belong to kind {other.name!r}")
    _KINDS[kind.name] = kind
    return kind


register_kind(UNET2D)
register_kind(STABLE_DIFFUSION)
register_kind(DIT)


def model_kinds() -> tuple[ModelKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def kind_named(name: str) -> ModelKind:
    """The registered kind called ``name`` (``KeyError`` naming the known ones otherwise)."""
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown model kind {name!r} (known: {', '.join(_KINDS)})") from None


def denoiser_components() -> tuple[str, ...]:
    """The ``model_index.json`` entries a registered kind's denoiser may be under, e.g. ``("unet",)``."""
    return tuple(dict.fromkeys(k.component for k in _KINDS.values()))


def supported_classes(component: str | None = None) -> tuple[str, ...]:
    """The denoiser classes of every registered kind (of ``component`` only, when given)."""
    return tuple(
        dict.fromkeys(c for k in _KINDS.values() if component is None or k.component == component for c in k.classes)
    )


def supported_pipelines() -> tuple[str, ...]:
    """The pipeline classes (``model_index.json`` ``_class_name``) of every registered kind."""
    return tuple(dict.fromkeys(p for k in _KINDS.values() for p in k.pipelines))


def kind_for_class(component: str, class_name: str) -> ModelKind | None:
    """The kind whose denoiser is ``class_name`` under ``component``, or ``None``."""
    for kind in _KINDS.values():
        if kind.component == component and class_name in kind.classes:
            return kind
    return None
