"""Torch-free checks of a diffusers checkpoint directory: what loads, what is refused, and the model's identity.

The rules of each pipeline kind (which ``model_index.json`` classes, schedulers and prediction types) come from the
kind registry (:mod:`supernet.models.kinds`). The loader applies this check before it imports diffusers, and the
server (which must not import torch) validates a job's model path up front with exactly the same rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import ModelLoadError
from supernet.conditioning import class_table
from supernet.models.kinds import (
    ModelKind,
    denoiser_components,
    kind_for_class,
    kind_named,
    supported_classes,
    supported_pipelines,
)

#: The repository's shipped models: the digits testbed and the feature extractor its FDD is measured with.
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"
TESTBED_DIR = SHIPPED_MODELS / "digits-ddpm-16"
#: The text-to-image testbed (a StableDiffusionPipeline on the digits, prompts "a handwritten digit seven"...).
DIGITS_SD_DIR = SHIPPED_MODELS / "digits-sd"
FEATURES_DIR = SHIPPED_MODELS / "digits-features"
#: The class-conditional transformer testbed (a DiTPipeline on the digits, class d is the digit d).
DIGITS_DIT_DIR = SHIPPED_MODELS / "digits-dit"
#: The shipped models the digits classifier measures (FDD, prompt or class accuracy), recognised by their weights.
DIGITS_MODELS = (TESTBED_DIR, DIGITS_SD_DIR, DIGITS_DIT_DIR)

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory.

    Attributes:
        path: the resolved directory.
        kind: the pipeline kind's name (:class:`~supernet.models.kinds.ModelKind`), e.g. ``"unet2d"``.
        conditional: whether the model takes a condition (prompts, class labels); ``False`` for ``UNet2DModel``.
        denoiser_config: the denoiser component's ``config.json``.
        scheduler_config: ``scheduler/scheduler_config.json``.
    """

    path: Path
    kind: str
    conditional: bool
    denoiser_config: dict[str, Any]
    scheduler_config: dict[str, Any]

    @property
    def model_kind(self) -> ModelKind:
        """The registered kind of the directory."""
        return kind_named(self.kind)

    @property
    def condition(self) -> str:
        """What the model is conditioned on: ``"prompts"``, ``"classes"`` or ``""`` (unconditional)."""
        return self.model_kind.condition

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))


def read_json_object(path: Path, what: str, shown: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`ModelLoadError` naming ``shown`` if it is missing or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(shown, f"not a diffusers directory: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(shown, f"{what} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(shown, f"{what} does not hold a JSON object")
    return data


def _class_of(entry: Any) -> str:
    return str(entry[1]) if isinstance(entry, list) and len(entry) == 2 else str(entry)


def kind_of_index(index: dict[str, Any], shown: str | Path) -> ModelKind:
    """The registered kind of a ``model_index.json``; :class:`ModelLoadError` when it names an unsupported pipeline
    class or no supported denoiser."""
    pipeline = index.get("_class_name")
    if pipeline is not None and pipeline not in supported_pipelines():
        raise ModelLoadError(
            shown, f"unsupported pipeline class {pipeline!r} (supported: {', '.join(supported_pipelines())})"
        )
    components = denoiser_components()
    present = [c for c in components if index.get(c)]
    if not present:
        names = " or ".join(repr(c) for c in components)
        raise ModelLoadError(shown, f"{MODEL_INDEX} names no {names} component")
    for component in present:
        kind = kind_for_class(component, _class_of(index[component]))
        if kind is not None:
            if pipeline is not None and kind.pipelines and pipeline not in kind.pipelines:
                raise ModelLoadError(
                    shown, f"a {pipeline} cannot hold a {_class_of(index[component])} (expected {kind.pipelines[0]})"
                )
            return kind
    found = _class_of(index[present[0]])
    raise ModelLoadError(shown, f"unsupported model class {found!r} (supported: {', '.join(supported_classes())})")


def check_model_dir(path: str | Path, shown: str | Path | None = None) -> ModelDir:
    """Check ``path`` is a supported diffusers directory without loading weights.

    It must hold ``model_index.json`` naming a supported pipeline class and the denoiser of a registered kind (a
    ``UNet2DModel`` or a ``UNet2DConditionModel`` under ``unet``), that component's ``config.json`` and safetensors
    weights, the other components the kind needs (a VAE, text encoder and tokenizer for Stable Diffusion), and
    ``scheduler/scheduler_config.json`` of one of the kind's schedulers with a supported prediction type and a
    positive integer ``num_train_timesteps``.
    Errors are :class:`ModelLoadError` naming ``shown`` (default: the path).
    """
    root = Path(path).expanduser()
    shown = root if shown is None else shown
    if not root.exists():
        raise ModelLoadError(shown, "path does not exist")
    if not root.is_dir():
        raise ModelLoadError(shown, "not a directory")
    root = root.resolve()
    index = read_json_object(root / MODEL_INDEX, MODEL_INDEX, shown)
    kind = kind_of_index(index, shown)
    component = kind.component
    config = read_json_object(root / component / "config.json", f"{component}/config.json", shown)
    declared = config.get("_class_name", _class_of(index[component]))
    if declared not in kind.classes:
        raise ModelLoadError(shown, f"unsupported model class {declared!r} in {component}/config.json")
    sched_cfg = read_json_object(root / SCHEDULER_CONFIG, SCHEDULER_CONFIG, shown)
    sched_class = sched_cfg.get("_class_name", "")
    if sched_class not in kind.schedulers:
        supported = ", ".join(kind.schedulers)
        raise ModelLoadError(shown, f"unsupported scheduler {sched_class!r} (supported: {supported})")
    prediction = sched_cfg.get("prediction_type", "epsilon")
    if prediction not in kind.prediction_types:
        supported = ", ".join(kind.prediction_types)
        raise ModelLoadError(shown, f"prediction_type {prediction!r} is not supported (supported: {supported})")
    steps = sched_cfg.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelLoadError(shown, f"scheduler_config.json has an invalid num_train_timesteps {steps!r}")
    _check_weights(root, component, shown)
    for other in kind.required:
        _check_component(root, index, other, shown)
    return ModelDir(root, kind.name, kind.conditional, config, sched_cfg)


#: The files a tokenizer directory must hold: a fast tokenizer's ``tokenizer.json``, or CLIP's BPE files.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _check_weights(root: Path, component: str, shown: str | Path) -> None:
    """A weights component must hold safetensors; pickled weights (``.bin``, ``.pt``, ``.ckpt``) are refused."""
    folder = root / component
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(ext))
    if pickled:
        raise ModelLoadError(
            shown, f"{component}/ holds pickled weights ({pickled[0]}); only safetensors are loaded (convert them)"
        )
    raise ModelLoadError(shown, f"{component}/ has no .safetensors weights (only safetensors are loaded)")


def _check_component(root: Path, index: dict[str, Any], component: str, shown: str | Path) -> None:
    """A component the pipeline needs besides the denoiser: named in ``model_index.json`` and present on disk."""
    if not index.get(component) or not (root / component).is_dir():
        raise ModelLoadError(shown, f"the pipeline's {component} is missing ({component}/ and its model_index entry)")
    if component == "tokenizer":
        if not any(all((root / component / f).is_file() for f in files) for files in TOKENIZER_FILES):
            raise ModelLoadError(shown, "tokenizer/ has neither tokenizer.json nor vocab.json and merges.txt")
        return
    read_json_object(root / component / "config.json", f"{component}/config.json", shown)
    _check_weights(root, component, shown)


def model_hash(path: str | Path, kind: ModelKind | None = None) -> str:
    """SHA-256 (16 hex digits) over the config, text and safetensors files of the kind's hashed components (for a
    ``UNet2DModel``: ``unet/``; Stable Diffusion: the UNet, text encoder and tokenizer): the identity used to key
    supernet artifacts.

    ``kind`` defaults to the one ``model_index.json`` names (:class:`ModelLoadError` when it names none).
    """
    root = Path(path)
    if kind is None:
        kind = kind_of_index(read_json_object(root / MODEL_INDEX, MODEL_INDEX, root), root)
    h = hashlib.sha256()
    for component in kind.hashed:
        folder = root / component
        files = sorted(p for ext in ("*.json", "*.txt", "*.safetensors") for p in folder.glob(ext) if p.is_file())
        first = [f for f in files if f.name == "config.json"]  # config first (the identity of shipped artifacts)
        for f in first + [f for f in files if f.name != "config.json"]:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def _shipped_digits_model(model_dir: str | Path) -> Path | None:
    """Which shipped digits model (:data:`DIGITS_MODELS`) ``model_dir`` is, by path or by weights, else ``None``."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    try:
        resolved = path.resolve()
        for shipped in DIGITS_MODELS:
            if shipped.is_dir() and resolved == shipped.resolve():
                return shipped
        digest = model_hash(path)
    except (OSError, ModelLoadError):
        return None
    return next((s for s in DIGITS_MODELS if _shipped_hash(s) == digest), None)


def features_for(model_dir: str | Path) -> Path | None:
    """The feature extractor FDD is measured with for this model, or ``None`` when there is none.

    The shipped digits models (the testbed DDPM and the text-to-image testbed) have one: the shipped digits
    classifier, ``models/digits-features``. Recognised by their weights (:func:`model_hash`), so a copy under another
    model root has it too.
    """
    if not (FEATURES_DIR / "config.json").is_file():
        return None
    return FEATURES_DIR if _shipped_digits_model(model_dir) is not None else None


def prompt_labels_for(model_dir: str | Path) -> dict[str, int] | None:
    """For a conditional model whose prompts (or class labels) each name a class the feature extractor predicts,
    ``{prompt: class}``: the shipped digits-sd testbed's ``prompts.txt`` names digit ``i`` on line ``i``, and the
    DiT testbed's class ``i`` is digit ``i``. ``None`` otherwise."""
    shipped = _shipped_digits_model(model_dir)
    if shipped is not None and shipped == DIGITS_DIT_DIR:
        return {label: i for i, label in class_table(model_dir).items()}
    if shipped is None or shipped != DIGITS_SD_DIR:
        return None
    try:
        lines = [line.strip() for line in (Path(model_dir) / "prompts.txt").read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return {prompt: i for i, prompt in enumerate(lines)} if len(lines) == 10 else None


_SHIPPED_HASHES: dict[Path, str | None] = {}


def _shipped_hash(shipped: Path) -> str | None:
    if shipped not in _SHIPPED_HASHES:
        try:
            _SHIPPED_HASHES[shipped] = model_hash(shipped) if shipped.is_dir() else None
        except (OSError, ModelLoadError):
            _SHIPPED_HASHES[shipped] = None
    return _SHIPPED_HASHES[shipped]
