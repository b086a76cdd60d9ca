"""What a conditional (text-to-image) model is conditioned on in a job, torch-free.

:class:`Conditioning` is the resolved form: the prompts, the optional negative prompt, the classifier-free guidance
scale and the images per prompt. Sample ``i`` of any sample set (calibration trajectories, the evaluation's
samples, the FP reference) draws prompt ``(i // images_per_prompt) % len(prompts)``: prompt-major, as diffusers'
``num_images_per_prompt`` lays a batch out, and the same for every prefix of the set, so a subset of the calibration
data keeps its prompts.

A model directory may carry defaults beside its weights (tmpq's own files, ignored by diffusers):
``prompts.txt`` (one prompt per line) and ``tmpq.json`` (``{"guidance_scale": ...}``). Without them the guidance
scale is diffusers' default for Stable Diffusion, 7.5.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ConfigError
from supernet.settings import canonical_key

#: The prompts file a model directory may ship (one prompt per line).
PROMPTS_FILE = "prompts.txt"
#: tmpq's defaults file in a model directory (``guidance_scale``, ``default_steps``).
DEFAULTS_FILE = "tmpq.json"
#: diffusers' default guidance scale of ``StableDiffusionPipeline``.
DEFAULT_GUIDANCE = 7.5
MAX_IMAGES_PER_PROMPT = 64


@dataclass(frozen=True)
class Conditioning:
    """The resolved condition of a job on a text-to-image model.

    Attributes:
        prompts: at least one prompt.
        guidance_scale: classifier-free guidance scale; ``> 1`` runs the denoiser on the unconditional (or negative)
            prompt too and mixes ``eps_u + g·(eps_c − eps_u)``, as diffusers does; ``≤ 1`` runs the prompt alone.
        negative_prompt: the prompt of the unconditional branch (``None``: the empty prompt).
        images_per_prompt: consecutive samples per prompt.
    """

    prompts: tuple[str, ...]
    guidance_scale: float = DEFAULT_GUIDANCE
    negative_prompt: str | None = None
    images_per_prompt: int = 1

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("prompts", "a conditional model needs at least one prompt")
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        if not 1 <= int(self.images_per_prompt) <= MAX_IMAGES_PER_PROMPT:
            raise ConfigError("images_per_prompt", f"must be in [1, {MAX_IMAGES_PER_PROMPT}]")

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (diffusers: ``guidance_scale > 1``)."""
        return self.guidance_scale > 1.0

    def prompt_index(self, n: int) -> list[int]:
        """The prompt of each of ``n`` samples."""
        return [(i // self.images_per_prompt) % len(self.prompts) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["prompts"] = list(self.prompts)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Conditioning:
        return cls(
            tuple(data["prompts"]),
            float(data.get("guidance_scale", DEFAULT_GUIDANCE)),
            data.get("negative_prompt"),
            int(data.get("images_per_prompt", 1)),
        )

    def key(self) -> str:
        """A short canonical hash: part of the identity of everything calibrated on these prompts."""
        return canonical_key(self.to_dict())


def read_prompts_file(path: Path, field: str = "prompts_file") -> tuple[str, ...]:
    """The non-empty lines of a prompts file (``#`` starts a comment line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(field, f"{path.name} does not exist beside the model") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(field, f"{path.name} cannot be read: {exc}") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise ConfigError(field, f"{path.name} holds no prompt")
    return prompts


def model_defaults(model_dir: str | Path) -> dict[str, Any]:
    """The model directory's ``tmpq.json`` defaults (empty when it has none)."""
    path = Path(model_dir) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def default_conditioning(model_dir: str | Path) -> Conditioning | None:
    """The conditioning a model directory ships (its ``prompts.txt`` and ``tmpq.json``), or ``None`` without a
    prompts file."""
    path = Path(model_dir) / PROMPTS_FILE
    if not path.is_file():
        return None
    defaults = model_defaults(model_dir)
    return Conditioning(read_prompts_file(path), float(defaults.get("guidance_scale", DEFAULT_GUIDANCE)))


def resolve_conditioning(
    model_dir: str | Path,
    prompts: Sequence[str] | None,
    prompts_file: str | None,
    guidance_scale: float | None,
    negative_prompt: str | None,
    images_per_prompt: int,
) -> Conditioning:
    """The job's conditioning on the model in ``model_dir``: its prompts (the list, else ``prompts_file``, else the
    model's ``prompts.txt``), its guidance scale (else the model's ``tmpq.json``, else 7.5). ConfigError naming the
    field when there are no prompts or the file is not inside the model directory."""
    root = Path(model_dir).resolve()
    if prompts:
        found = tuple(prompts)
    else:
        name = prompts_file or PROMPTS_FILE
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise ConfigError("prompts_file", f"{name!r} is not inside the model directory")
        if prompts_file is None and not path.is_file():
            raise ConfigError(
                "prompts", f"the model is conditional: give prompts (or ship a {PROMPTS_FILE} beside the model)"
            )
        found = read_prompts_file(path)
    if guidance_scale is None:
        guidance_scale = float(model_defaults(root).get("guidance_scale", DEFAULT_GUIDANCE))
    return Conditioning(found, float(guidance_scale), negative_prompt, images_per_prompt)
