"""A search job as one validated, frozen value: :class:`JobSpec`, the sections joined.

Each section is owned and validated by the package it configures:

================  =========================================================  ===========================
section           what it says                                               owner
================  =========================================================  ===========================
``model``         the model directory, device, dtype, conditioning           :mod:`supernet.model_settings`
``search``        bit options, step counts, grouping, granularity, budget,  :mod:`search.spec`
                  algorithm, population, generations, seed
``calibration``   how the supernet is calibrated                             :mod:`supernet.calibration.settings`
``quantization``  the quantizers' integer format (symmetric weight or        :mod:`supernet.settings`
                  activation codes), attention matmuls as sites, layers
                  left in FP
``evaluation``    objective, samples, reference steps, re-scoring, batch     :mod:`workers.evaluation_settings`
``execution``     the job's Ray resources (the cluster is the operator's)    :mod:`workers.ray_config`
================  =========================================================  ===========================

A spec is validated once, at submission, by :func:`validate_job`: first every field (:meth:`JobSpec.from_dict`),
then against the model it names (:meth:`JobSpec.resolved`): a step count or reference schedule longer than the
model's training timesteps, FDD without a feature extractor, prompts for an unconditional model. Every problem is a
``ConfigError`` naming the dotted field (``calibration.samples``). Torch- and Ray-free: the server imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search.errors import ConfigError
from search.fields import within
from search.spec import SearchSettings
from supernet.calibration.settings import CalibrationSettings
from supernet.model_settings import ModelSettings, resolve_model_path
from supernet.settings import SupernetSettings
from supernet.zoo.modeldir import check_model_dir, features_for
from workers.evaluation_settings import EvaluationSettings
from workers.ray_config import ExecutionSettings

JOB_SPEC_VERSION = 2

#: Section name → how to read it from a plain mapping.
_READERS: dict[str, Callable[[Any], Any]] = {
    "model": ModelSettings.from_dict,
    "search": SearchSettings.from_dict,
    "calibration": lambda d: CalibrationSettings.from_dict(_mapping(d)),
    "quantization": lambda d: SupernetSettings.from_dict(_mapping(d)),
    "evaluation": EvaluationSettings.from_dict,
    "execution": ExecutionSettings.from_dict,
}
SECTIONS = tuple(_READERS)

#: Where each field of the flat version-1 spec went (also used to point a misplaced key to its section).
_V1_SECTIONS = {
    **{k: "search" for k in ("bit_options", "steps", "grouping", "granularity", "budget", "algorithm", "solver")},
    **{k: "search" for k in ("population", "generations", "seed")},
    **{k: "evaluation" for k in ("objective", "samples", "rescore_samples", "reference_steps", "batch_size")},
    **{k: "model" for k in ("path", "device", "dtype", "prompts", "prompts_file", "guidance_scale")},
    **{k: "model" for k in ("negative_prompt", "images_per_prompt")},
    "ray": "execution",
}


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError("", f"expected a mapping, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class JobSpec:
    """Everything that defines one search job, in sections (see the module docstring)."""

    model: ModelSettings
    search: SearchSettings = field(default_factory=SearchSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    quantization: SupernetSettings = field(default_factory=SupernetSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    version: int = JOB_SPEC_VERSION

    def __post_init__(self) -> None:
        """Checks across sections (each section validated itself)."""
        if self.search.cost == "latency" and self.evaluation.latency_backend is None:
            raise ConfigError(
                "search.cost", "latency needs a backend to measure it on: set evaluation.latency_backend (cpu-int8)"
            )
        if self.evaluation.latency_backend is not None and self.model.device.startswith("cuda"):
            raise ConfigError(
                "evaluation.latency_backend",
                f"{self.evaluation.latency_backend} runs on the CPU; the job's model.device is {self.model.device}",
            )
        if self.evaluation.latency_backend is not None and self.model.dtype != "float32":
            raise ConfigError(
                "evaluation.latency_backend",
                f"{self.evaluation.latency_backend} is measured on the float32 supernet; model.dtype is "
                f"{self.model.dtype}",
            )

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """Build from a plain mapping (REST body, YAML): every unknown key, wrong type or bad value anywhere is a
        ConfigError naming the dotted field. A version-1 spec (flat, ``version: 1``) is read too."""
        if not isinstance(data, Mapping):
            raise ConfigError("spec", f"expected a mapping, got {type(data).__name__}")
        version = data.get("version", JOB_SPEC_VERSION)
        if version == 1:
            data = upgrade_spec_dict(data)
        elif version != JOB_SPEC_VERSION:
            raise ConfigError("version", f"spec version {version!r} is not supported (expected {JOB_SPEC_VERSION})")
        for key in data:
            if key in _READERS or key == "version":
                continue
            home = _V1_SECTIONS.get(str(key))
            hint = f"; it belongs in the {home} section ({home}.{key})" if home else f" (sections: {list(SECTIONS)})"
            raise ConfigError(str(key), f"unknown field{hint}")
        if "model" not in data:
            raise ConfigError("model", "required field is missing")
        sections: dict[str, Any] = {}
        for name, read in _READERS.items():
            value = data.get(name)
            if value is None and name != "model":
                continue
            try:
                sections[name] = read(value)
            except ConfigError as exc:
                raise within(name, exc) from None
            except TypeError as exc:  # a section given as something other than a mapping
                raise ConfigError(name, f"invalid section: {exc}") from None
        return cls(**sections)

    @classmethod
    def from_yaml(cls, path: str | Path) -> JobSpec:
        """Read a YAML file holding one mapping."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError("spec", f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("spec", f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
        return cls.from_dict(data if data is not None else {})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form, every section written out; ``from_dict(to_dict())`` gives an equal spec."""
        return {
            "version": self.version,
            "model": self.model.to_dict(),
            "search": self.search.to_dict(),
            "calibration": self.calibration.to_dict(),
            "quantization": self.quantization.to_dict(),
            "evaluation": self.evaluation.to_dict(),
            "execution": self.execution.to_dict(),
        }

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some sections changed."""
        return dataclasses.replace(self, **changes)

    # -- checks against the model ---------------------------------------------------------------------

    def resolved(self, model_root: str | Path) -> JobSpec:
        """This spec checked against the model it names, with the model path resolved under ``model_root`` and
        the model-dependent defaults filled in (``evaluation.rescore_samples``; a conditional model's prompts and
        guidance scale from its ``prompts.txt`` and ``tmpq.json``).

        Raises ``ModelLoadError`` when the model is outside the root or not a supported directory, and a
        ``ConfigError`` naming the dotted field for anything the model cannot run. Reads only JSON configs (no
        weights, no torch): cheap enough for every submission.
        """
        path = resolve_model_path(self.model.path, model_root)
        info = check_model_dir(path, shown=self.model.path)
        steps = info.num_train_timesteps
        try:
            model = self.model.resolved_for_model(path, info.condition)
        except ConfigError as exc:
            raise within("model", exc) from None
        try:
            self.search.validate_for_model(steps)
        except ConfigError as exc:
            raise within("search", exc) from None
        if self.calibration.grid_steps > steps:
            raise ConfigError(
                "calibration.grid_steps", f"{self.calibration.grid_steps} is more than the model's {steps} timesteps"
            )
        try:
            evaluation = self.evaluation.resolved_for_model(steps, features_for(path) is not None)
            evaluation = evaluation.resolved_features(model_root)
        except ConfigError as exc:
            raise within("evaluation", exc) from None
        return self.replace(model=model.replace(path=str(path)), evaluation=evaluation)


def validate_job(data: Any, model_root: str | Path) -> JobSpec:
    """Validate a submitted job fully — its fields, then against its model — before any work: the one check the
    REST API, the client, ``tmpq submit`` (through the server) and ``tmpq search`` share."""
    return JobSpec.from_dict(data).resolved(model_root)


def upgrade_spec_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 (flat) spec mapping in the version-2 layout, without validating it; a version-2 one unchanged.

    Version 1 had the Ray ``address`` in the job (now the operator's: dropped) and a local ``output`` directory
    (now ``tmpq search --out``: dropped). Keys it did not know stay at the top level, where they are refused.
    """
    if data.get("version", JOB_SPEC_VERSION) != 1:
        return dict(data)
    out: dict[str, Any] = {"version": JOB_SPEC_VERSION}
    sections: dict[str, dict[str, Any]] = {"search": {}, "evaluation": {}}
    for key, value in data.items():
        if key in ("version", "output"):
            continue
        if key == "model":
            out["model"] = value
        elif key == "calibration":
            out["calibration"] = value
        elif key == "ray":
            ray = dict(value) if isinstance(value, Mapping) else value
            if isinstance(ray, dict):
                ray.pop("address", None)
            out["execution"] = {"ray": ray}
        elif _V1_SECTIONS.get(key) in sections:
            sections[_V1_SECTIONS[key]][key] = value
        else:
            out[key] = value
    out.update({name: values for name, values in sections.items() if values})
    return out


def spec_field(spec: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """A field of a stored spec mapping by its dotted name (``"search.budget"``), either version; ``default`` when
    it is absent. For readers of stored jobs (the API, the CLI, plots) that must not fail on an old row.

    ``model`` may be a bare path string in a submitted spec; ``"model.path"`` reads it either way.
    """
    value: Any = upgrade_spec_dict(spec)
    if isinstance(value.get("model"), str):
        value["model"] = {"path": value["model"]}
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def latency_label(spec: Mapping[str, Any]) -> str | None:
    """What a latency search's milliseconds were measured on (``"cpu-int8 at batch 64"``), for plot axes; ``None``
    when the stored ``spec`` searched BitOps."""
    if spec_field(spec, "search.cost", "bitops") != "latency":
        return None
    batch = spec_field(spec, "evaluation.latency_batch_size") or spec_field(spec, "evaluation.batch_size", 64)
    return f"{spec_field(spec, 'evaluation.latency_backend', '?')} at batch {batch}"
