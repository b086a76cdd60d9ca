"""The ``model`` section of a job spec: :class:`ModelSettings`, torch-free (the server validates it).

Which model a job runs (a diffusers directory, named relative to the model root), on which device and in which
compute dtype, and the conditioning a conditional model needs (prompts or class labels, guidance). Every command
resolves a model name the same way, with :func:`resolve_model_path`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from search.errors import ConfigError, ModelLoadError
from search.fields import check_known, read_number, read_str, shown
from supernet.conditioning import (
    DEFAULT_CLASS_GUIDANCE,
    MAX_CLASSES,
    MAX_IMAGES_PER_PROMPT,
    PROMPTS_FILE,
    Conditioning,
    resolve_classes,
    resolve_conditioning,
)

MODEL_SETTINGS_VERSION = 1

#: ``auto``: CUDA when the process (or the Ray actor) has a GPU, else the CPU.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")
#: The compute dtypes a job may name (the FP model's; calibration always runs in float32, see DESIGN.md).
DTYPES = ("float32", "bfloat16", "float16")
MAX_PROMPTS = 256
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class ModelSettings:
    """The model a job runs (the ``model`` section; a plain string is read as ``{"path": ...}``).

    Attributes:
        path: the diffusers model directory, absolute or relative to the model root (``TMPQ_MODEL_ROOT``).
        device: ``auto`` (CUDA when the worker has a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: compute dtype of the FP model and the candidates during evaluation: ``float32``, ``bfloat16`` or
            ``float16`` (the half types pay off on GPUs; the CPU runs them too). The supernet is calibrated in
            float32 and cast, so one calibration serves every dtype.
        tf32: allow TF32 in CUDA matmuls and convolutions while evaluating (off: objectives in true float32).
        prompts: the prompts of a text-to-image model (``None``: from ``prompts_file``); refused for unconditional
            models, never empty.
        prompts_file: a text file of prompts inside the model directory (``None``: the model's ``prompts.txt``).
        guidance_scale: classifier-free guidance scale of a conditional model (``None``: the model's default, else
            diffusers' 7.5).
        negative_prompt: the unconditional branch's prompt under guidance (``None``: the empty prompt).
        images_per_prompt: consecutive samples drawn per prompt (per class).
        classes: the classes a class-conditional model (DiT) is evaluated on, as class ids or labels (``None``:
            every class of the model); refused for other models. Resolved to the labels of ``id2label``.
        version: format version of this section.
    """

    path: str
    device: str = "auto"
    dtype: str = "float32"
    tf32: bool = False
    prompts: tuple[str, ...] | None = None
    prompts_file: str | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    images_per_prompt: int = 1
    classes: tuple[int | str, ...] | None = None
    version: int = MODEL_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != MODEL_SETTINGS_VERSION:
            raise ConfigError("version", f"{shown(self.version)} is not supported (expected {MODEL_SETTINGS_VERSION})")
        read_str(self.path, "path")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {shown(self.device)}")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {list(DTYPES)}, got {shown(self.dtype)}")
        if not isinstance(self.tf32, bool):
            raise ConfigError("tf32", f"must be true or false, got {shown(self.tf32)}")
        prompts = self.prompts
        if prompts is not None:
            if isinstance(prompts, str) or not isinstance(prompts, list | tuple):
                raise ConfigError("prompts", f"expected a list of strings, got {type(prompts).__name__}")
            if not prompts:
                raise ConfigError("prompts", "must not be empty (leave it out to use the model's prompts file)")
            if len(prompts) > MAX_PROMPTS:
                raise ConfigError("prompts", f"at most {MAX_PROMPTS} prompts, got {len(prompts)}")
            for i, prompt in enumerate(prompts):
                read_str(prompt, f"prompts[{i}]", max_len=MAX_PROMPT_CHARS)
            object.__setattr__(self, "prompts", tuple(prompts))
        if self.prompts_file is not None:
            read_str(self.prompts_file, "prompts_file", max_len=255)
            if prompts is not None:
                raise ConfigError("prompts_file", "give prompts or prompts_file, not both")
        if self.negative_prompt is not None:
            read_str(self.negative_prompt, "negative_prompt", max_len=MAX_PROMPT_CHARS, empty_ok=True)
        if self.guidance_scale is not None:
            scale = read_number(self.guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
            object.__setattr__(self, "guidance_scale", scale)
        self._check_classes()
        images = self.images_per_prompt
        if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_IMAGES_PER_PROMPT:
            raise ConfigError("images_per_prompt", f"must be an integer in [1, {MAX_IMAGES_PER_PROMPT}]")

    def _check_classes(self) -> None:
        classes = self.classes
        if classes is None:
            return
        if isinstance(classes, str) or not isinstance(classes, list | tuple):
            raise ConfigError("classes", f"expected a list of class ids or labels, got {type(classes).__name__}")
        if not classes:
            raise ConfigError("classes", "must not be empty (leave it out to evaluate every class)")
        if len(classes) > MAX_CLASSES:
            raise ConfigError("classes", f"at most {MAX_CLASSES} classes, got {len(classes)}")
        for i, c in enumerate(classes):
            if isinstance(c, bool) or not isinstance(c, int | str):
                raise ConfigError(f"classes[{i}]", f"expected a class id or label, got {shown(c)}")
            if isinstance(c, int) and c < 0:
                raise ConfigError(f"classes[{i}]", f"a class id is >= 0, got {c}")
            if isinstance(c, str):
                read_str(c, f"classes[{i}]", max_len=MAX_PROMPT_CHARS)
        if self.prompts is not None or self.prompts_file is not None or self.negative_prompt is not None:
            raise ConfigError("classes", "give prompts (a text-to-image model) or classes (a class-conditional one)")
        object.__setattr__(self, "classes", tuple(classes))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> ModelSettings:
        """From a mapping, or from a bare path string."""
        if isinstance(data, str):
            return cls(path=data)
        if not isinstance(data, Mapping):
            raise ConfigError("", f"expected a model path or a mapping, got {type(data).__name__}")
        check_known(data, tuple(f.name for f in dataclasses.fields(cls)), "")
        if "path" not in data:
            raise ConfigError("path", "required field is missing")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form."""
        out = dataclasses.asdict(self)
        out["prompts"] = list(self.prompts) if self.prompts is not None else None
        if self.classes is None:
            del out["classes"]  # the field came with class-conditional models: older stored specs stay as they were
        else:
            out["classes"] = list(self.classes)
        return out

    def replace(self, **changes: Any) -> ModelSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    #: The fields that condition a model (refused for unconditional ones).
    CONDITION_FIELDS: ClassVar[tuple[str, ...]] = (
        "prompts",
        "prompts_file",
        "guidance_scale",
        "negative_prompt",
        "classes",
    )
    #: The fields only a text-to-image model takes, and only a class-conditional one.
    PROMPT_FIELDS: ClassVar[tuple[str, ...]] = ("prompts", "prompts_file", "negative_prompt")
    CLASS_FIELDS: ClassVar[tuple[str, ...]] = ("classes",)

    @property
    def conditional(self) -> bool:
        """Whether the settings carry a condition (prompts, a prompts file, guidance, a negative prompt, classes)."""
        return any(getattr(self, f) is not None for f in self.CONDITION_FIELDS) or self.images_per_prompt != 1

    def validate_for_model(self, condition: str) -> None:
        """Conditioning fields must match the model's ``condition`` (:data:`~supernet.models.kinds.CONDITIONS`): an
        unconditional model takes no prompts, classes or guidance; a text-to-image model no classes; a
        class-conditional model no prompts."""
        if not condition:
            for name in self.CONDITION_FIELDS:
                if getattr(self, name) is not None:
                    raise ConfigError(name, "the model is unconditional: it takes no condition")
            if self.images_per_prompt != 1:
                raise ConfigError("images_per_prompt", "the model is unconditional: it takes no prompts")
            return
        refused = self.CLASS_FIELDS if condition == "prompts" else self.PROMPT_FIELDS
        reason = (
            "the model is text-to-image: it takes prompts, not class labels"
            if condition == "prompts"
            else "the model is class-conditional: it takes classes (ids or labels), not prompts"
        )
        for name in refused:
            if getattr(self, name) is not None:
                raise ConfigError(name, reason)

    def conditioning(self, model_dir: str | Path) -> Conditioning | None:
        """The resolved conditioning on the (conditional) model in ``model_dir``; ``None`` when these settings carry
        none and the model ships no prompts file (an unconditional model, or a class-conditional one whose adapter
        then takes every class)."""
        if self.classes is not None:
            return resolve_classes(model_dir, self.classes, self.guidance_scale, self.images_per_prompt)
        if not self.conditional and not (Path(model_dir) / PROMPTS_FILE).is_file():
            return None
        return self._resolve(model_dir)

    def _resolve(self, model_dir: str | Path) -> Conditioning:
        return resolve_conditioning(
            model_dir,
            self.prompts,
            self.prompts_file,
            self.guidance_scale,
            self.negative_prompt,
            self.images_per_prompt,
        )

    def resolved_for_model(self, model_dir: str | Path, condition: str) -> ModelSettings:
        """Checked against the model's ``condition``, with a conditional model's prompts (or classes, as labels)
        and guidance filled in from its files, so the stored job says exactly what it ran."""
        self.validate_for_model(condition)
        if not condition:
            return self
        if condition == "classes":
            resolved = resolve_classes(model_dir, self.classes, self.guidance_scale, self.images_per_prompt)
            return self.replace(classes=resolved.prompts, guidance_scale=resolved.guidance_scale)
        resolved = self._resolve(model_dir)
        return self.replace(prompts=resolved.prompts, prompts_file=None, guidance_scale=resolved.guidance_scale)

    def condition_key(self) -> str | None:
        """The identity of a resolved conditional job's condition (see :meth:`resolved_for_model`), ``None`` when
        it has none: part of the identity of its calibrated supernet."""
        if self.classes is not None:  # resolved: the labels
            scale = DEFAULT_CLASS_GUIDANCE if self.guidance_scale is None else self.guidance_scale
            return Conditioning(tuple(str(c) for c in self.classes), scale, None, self.images_per_prompt).key()
        if self.prompts is None:
            return None
        return Conditioning(
            self.prompts, self.guidance_scale or 0.0, self.negative_prompt, self.images_per_prompt
        ).key()


def resolve_model_path(model: str | Path, root: str | Path) -> Path:
    """``model`` as an absolute, symlink-free path that must lie under ``root``.

    A relative ``model`` is taken relative to ``root`` (``TMPQ_MODEL_ROOT``: every command resolves it so).
    Raises :class:`ModelLoadError` naming the path otherwise.
    """
    root = Path(root).expanduser().resolve()
    given = Path(model).expanduser()
    candidate = given if given.is_absolute() else root / given
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelLoadError(model, f"path does not exist (looked for {candidate})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(model, f"path cannot be resolved: {exc}") from None
    if not resolved.is_relative_to(root):
        raise ModelLoadError(model, f"path is outside the model root {root}")
    return resolved
