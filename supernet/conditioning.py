"""What a conditional (text-to-image or class-conditional) model is conditioned on in a job, torch-free.

:class:`Conditioning` is the resolved form: the prompts, the optional negative prompt, the classifier-free guidance
scale and the images per prompt. Sample ``i`` of any sample set (calibration trajectories, the evaluation's
samples, the FP reference) draws prompt ``(i // images_per_prompt) % len(prompts)``: prompt-major, as diffusers'
``num_images_per_prompt`` lays a batch out, and the same for every prefix of the set, so a subset of the calibration
data keeps its prompts.

A model directory may carry defaults beside its weights (tmpq's own files, ignored by diffusers):
``prompts.txt`` (one prompt per line) and ``tmpq.json`` (``{"guidance_scale": ...}``). Without them the guidance
scale is diffusers' default for Stable Diffusion, 7.5.

A class-conditional model (DiT) is conditioned on class labels the same way: its "prompts" are the labels of the
classes a job evaluates (the ``id2label`` names of ``model_index.json``, or the class number where it has none),
sample ``i`` draws class ``i % len(classes)``, and the guidance scale defaults to ``DiTPipeline``'s 4.0
(:func:`resolve_classes`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ConfigError
from search.fields import shown
from supernet.settings import canonical_key

#: The prompts file a model directory may ship (one prompt per line).
PROMPTS_FILE = "prompts.txt"
#: tmpq's defaults file in a model directory (``guidance_scale``, ``default_steps``).
DEFAULTS_FILE = "tmpq.json"
#: diffusers' default guidance scale of ``StableDiffusionPipeline``.
DEFAULT_GUIDANCE = 7.5
MAX_IMAGES_PER_PROMPT = 64
#: diffusers' default guidance scale of ``DiTPipeline``.
DEFAULT_CLASS_GUIDANCE = 4.0
#: At most this many classes in a job (ImageNet DiTs have 1,000).
MAX_CLASSES = 10_000


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


def class_table(model_dir: str | Path, names: Mapping[int, Sequence[str]] | None = None) -> dict[int, str]:
    """``{class id: label}`` of a class-conditional pipeline directory: ``model_index.json``'s ``id2label`` (a
    label is its first comma-separated name; ``names``: :func:`class_names` when the caller has read them), else
    every class of the transformer's label table (``num_embeds_ada_norm``) named by its number."""
    names = class_names(model_dir) if names is None else names
    if names:
        return {i: aliases[0] for i, aliases in names.items()}
    n = _json_object(Path(model_dir) / "transformer" / "config.json").get("num_embeds_ada_norm")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("classes", "the model has neither id2label nor num_embeds_ada_norm: its classes are unknown")
    return {i: str(i) for i in range(n)}


def class_names(model_dir: str | Path) -> dict[int, list[str]]:
    """Every class's names in ``model_index.json``'s ``id2label`` (comma-separated, as diffusers' ``DiTPipeline``
    splits them), by id; empty when it has none."""
    table = _json_object(Path(model_dir) / "model_index.json").get("id2label")
    out: dict[int, list[str]] = {}
    if not isinstance(table, Mapping):
        return out
    for key, value in table.items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise ConfigError("classes", f"the model's id2label has a non-integer class id {shown(key)}") from None
        out[i] = [a.strip() for a in str(value).split(",") if a.strip()] or [str(i)]
    return dict(sorted(out.items()))


def class_ids(labels: Sequence[str], table: Mapping[int, str]) -> list[int]:
    """The class id of each label (a label of ``table``, else a class number in it); ConfigError naming
    ``classes[i]`` for one that is neither."""
    by_label = {label: i for i, label in sorted(table.items(), reverse=True)}  # the lowest id wins a shared label
    ids = []
    for i, label in enumerate(labels):
        key = str(label).strip()
        if key in by_label:
            ids.append(by_label[key])
        elif key.lstrip("-").isdigit() and int(key) in table:
            ids.append(int(key))
        else:
            raise ConfigError(f"classes[{i}]", f"{shown(label)} is not a class of the model (e.g. {_examples(table)})")
    return ids


def resolve_classes(
    model_dir: str | Path,
    classes: Sequence[int | str] | None,
    guidance_scale: float | None,
    images_per_prompt: int,
) -> Conditioning:
    """The job's conditioning on the class-conditional model in ``model_dir``: the classes it names (ids, labels or
    any of a label's comma-separated names; default: every class of :func:`class_table`), as their labels, and its
    guidance scale (else the model's ``tmpq.json``, else ``DiTPipeline``'s 4.0). ConfigError naming
    ``classes[i]`` for a class the model lacks."""
    names = class_names(model_dir)
    table = class_table(model_dir, names)
    alias = {a: table[i] for i, aliases in sorted(names.items(), reverse=True) for a in aliases}
    ids = list(table) if classes is None else class_ids([alias.get(str(c), str(c)) for c in classes], table)
    if len(ids) > MAX_CLASSES:
        raise ConfigError("classes", f"at most {MAX_CLASSES} classes, the model has {len(ids)}: name the ones to use")
    if guidance_scale is None:
        guidance_scale = float(model_defaults(model_dir).get("guidance_scale", DEFAULT_CLASS_GUIDANCE))
    return Conditioning(tuple(table[i] for i in ids), float(guidance_scale), None, images_per_prompt)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("classes", f"{path.name} of the model cannot be read: {exc}") from None
    return data if isinstance(data, dict) else {}


def _examples(table: Mapping[int, str]) -> str:
    first = list(table.items())[:3]
    return ", ".join(f"{i} or {label!r}" if label != str(i) else str(i) for i, label in first)
