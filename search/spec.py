"""A whole search job as one validated, frozen value: :class:`SearchSpec`.

Built from a plain mapping (REST body, YAML file, CLI flags) with :meth:`SearchSpec.from_dict`; every problem
is reported as ``ConfigError(field, reason)`` naming the field (nested fields dotted, e.g.
``ray.num_actors``). Checks that need the model (its number of training timesteps) are in
:meth:`SearchSpec.validate_for_model`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search.errors import ConfigError

SPEC_VERSION = 1

#: The one floating-point bit option a job may offer besides 2..8 ("leave this tensor in FP16").
FP_OPTION = 16

GROUPINGS = ("nonuniform", "uniform")
GRANULARITIES = ("site", "block")
OBJECTIVES = ("mse", "fdd")
ALGORITHMS = ("nsga2", "tmpq_evolution", "random")

#: ``"W6A6@10"``: the BitOps of every site at W6A6 for 10 steps.
BUDGET_PATTERN = re.compile(r"^\s*W(\d+)\s*A(\d+)\s*@\s*(\d+)\s*$", re.IGNORECASE)

_RAY_FIELDS = ("address", "num_actors", "num_cpus", "num_gpus", "threads_per_actor")
_MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class UniformBudget:
    """A budget given as "the cost of uniform WxAy at K steps"."""

    w_bits: int
    a_bits: int
    steps: int

    def __str__(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}@{self.steps}"


def parse_budget(value: Any, name: str = "budget") -> float | UniformBudget | None:
    """``None``, a positive number of BitOps, or a ``"WxAy@K"`` string; anything else is a ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(name, f"expected a number of BitOps or 'WxAy@K', got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(name, f"must be a positive finite number of BitOps, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = BUDGET_PATTERN.match(value)
        if not match:
            raise ConfigError(name, f"expected a number or a string like 'W6A6@10', got {value!r}")
        w, a, k = (int(g) for g in match.groups())
        for bits in (w, a):
            _check_bits(bits, name)
        if k < 1:
            raise ConfigError(name, f"step count must be at least 1 in {value!r}")
        return UniformBudget(w, a, k)
    raise ConfigError(name, f"expected a number or a string like 'W6A6@10', got {type(value).__name__}")


def _check_bits(bits: int, name: str) -> None:
    if not (2 <= bits <= 8 or bits == FP_OPTION):
        raise ConfigError(name, f"bit-width {bits} is not in 2..8 or {FP_OPTION}")


# ---------------------------------------------------------------------------------------------------------
# Small typed readers: each returns the value or raises ConfigError naming the field.
# ---------------------------------------------------------------------------------------------------------


def _int(value: Any, name: str, low: int, high: int = _MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in [{low}, {high}], got {value}")
    return int(value)


def _number(value: Any, name: str, low: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"expected a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ConfigError(name, f"must be {'>' if strict else '>='} {low}, got {value}")
    return float(value)


def _choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(name, f"must be one of {list(options)}, got {value!r}")
    return str(value)


def _str(value: Any, name: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(name, f"expected a non-empty string, got {value!r}")
    return value


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(name, f"expected a mapping with string keys, got {type(value).__name__}")
    return dict(value)


def _int_list(value: Any, name: str, check: Callable[[int, str], int]) -> tuple[int, ...]:
    """One int or a non-empty list of distinct ints, each checked; returned sorted ascending."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(name, f"expected an integer or a non-empty list of integers, got {value!r}")
    checked = [check(v, f"{name}[{i}]") for i, v in enumerate(items)]
    if len(set(checked)) != len(checked):
        raise ConfigError(name, f"duplicate values in {checked}")
    return tuple(sorted(checked))


def _bit_option(value: Any, name: str) -> int:
    bits = _int(value, name, 2, FP_OPTION)
    _check_bits(bits, name)
    return bits


def _step_count(value: Any, name: str) -> int:
    return _int(value, name, 1, 100_000)


def _ray(value: Any) -> dict[str, Any]:
    ray = _mapping(value, "ray")
    readers: dict[str, Callable[[Any, str], Any]] = {
        "address": lambda v, n: _str(v, n, optional=True),
        "num_actors": lambda v, n: _int(v, n, 1, 10_000),
        "num_cpus": lambda v, n: _number(v, n, 0.0, strict=True),
        "num_gpus": lambda v, n: _number(v, n, 0.0),
        "threads_per_actor": lambda v, n: _int(v, n, 1, 1024),
    }
    for key in ray:
        if key not in readers:
            raise ConfigError(f"ray.{key}", f"unknown field (expected one of {list(_RAY_FIELDS)})")
    return {key: readers[key](v, f"ray.{key}") for key, v in ray.items()}


# ---------------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpec:
    """Everything that defines one search job.

    Attributes:
        model: path of the diffusers model directory (or a zoo name; resolved by the supernet).
        bit_options: the bit-widths the precision genes choose among, sorted ascending (each in 2..8 or 16).
        steps: the step counts K searched; one value or several (then K is itself a gene), sorted ascending.
        grouping: ``nonuniform`` (TMPQ-DM's quadratic groups) or ``uniform`` (equal widths).
        granularity: ``site`` (genes per quantizable site) or ``block`` (sites of a block share genes).
        objective: search quality metric, ``mse`` (vs the FP reference) or ``fdd``.
        samples: samples per candidate evaluation (same noise for every candidate).
        rescore_samples: samples for re-scoring the final front (0 = no re-scoring).
        reference_steps: steps of the FP reference schedule the ``mse`` objective compares against.
        budget: ``None``, BitOps, or :class:`UniformBudget` (``"W6A6@10"``).
        algorithm: ``nsga2``, ``tmpq_evolution`` or ``random``.
        population: individuals per generation.
        generations: number of generations.
        seed: seed of the search (and of its checkpoints' RNG state).
        calibration: settings passed through to the supernet (validated there).
        ray: Ray settings (address, num_actors, num_cpus, num_gpus, threads_per_actor); may be empty.
        output: optional directory for artefacts.
    """

    model: str
    bit_options: tuple[int, ...] = (5, 6, 7, 8)
    steps: tuple[int, ...] = (10,)
    grouping: str = "nonuniform"
    granularity: str = "site"
    objective: str = "mse"
    samples: int = 64
    rescore_samples: int = 1024
    reference_steps: int = 100
    budget: float | UniformBudget | None = None
    algorithm: str = "nsga2"
    population: int = 50
    generations: int = 20
    seed: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)
    output: str | None = None

    def __post_init__(self) -> None:
        checked = _validate_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpec:
        """Build from a plain mapping; unknown keys, wrong types and bad values raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError("spec", f"expected a mapping, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ConfigError("version", f"spec version {version!r} is not supported (expected {SPEC_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(str(key), "unknown field")
        if "model" not in data:
            raise ConfigError("model", "required field is missing")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpec:
        """Read a YAML file holding one mapping."""
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError("spec", f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError("spec", f"{path} is not valid YAML: {exc}".splitlines()[0]) from None
        return cls.from_dict(data if data is not None else {})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form; ``from_dict(to_dict())`` gives an equal spec."""
        out: dict[str, Any] = {"version": SPEC_VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = getattr(self, f.name)
        out["bit_options"] = list(self.bit_options)
        out["steps"] = self.steps[0] if len(self.steps) == 1 else list(self.steps)
        out["budget"] = str(self.budget) if isinstance(self.budget, UniformBudget) else self.budget
        out["calibration"] = dict(self.calibration)
        out["ray"] = dict(self.ray)
        return out

    def replace(self, **changes: Any) -> SearchSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- checks that need the model ------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        return max(self.steps)

    def validate_for_model(self, num_train_timesteps: int) -> None:
        """Check the step counts (and a ``WxAy@K`` budget) against the model's T; ConfigError otherwise.

        Every K must be ≤ T and, with the chosen grouping, leave no timestep group empty.
        """
        from search.space import timestep_groups  # local: space imports this module's constants

        for k in self.steps:
            if k > num_train_timesteps:
                raise ConfigError("steps", f"K={k} is larger than the model's {num_train_timesteps} timesteps")
            timestep_groups(num_train_timesteps, k, self.grouping)
        if isinstance(self.budget, UniformBudget) and self.budget.steps > num_train_timesteps:
            raise ConfigError("budget", f"{self.budget} has more steps than the model's {num_train_timesteps}")


def _validate_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise every field; returns the normalised values."""
    out = dict(values)
    out["model"] = _str(values["model"], "model")
    out["bit_options"] = _int_list(values["bit_options"], "bit_options", _bit_option)
    out["steps"] = _int_list(values["steps"], "steps", _step_count)
    out["grouping"] = _choice(values["grouping"], "grouping", GROUPINGS)
    out["granularity"] = _choice(values["granularity"], "granularity", GRANULARITIES)
    out["objective"] = _choice(values["objective"], "objective", OBJECTIVES)
    out["samples"] = _int(values["samples"], "samples", 1)
    out["rescore_samples"] = _int(values["rescore_samples"], "rescore_samples", 0)
    out["reference_steps"] = _int(values["reference_steps"], "reference_steps", 1, 100_000)
    budget = values["budget"]
    out["budget"] = budget if isinstance(budget, UniformBudget) else parse_budget(budget)
    out["algorithm"] = _choice(values["algorithm"], "algorithm", ALGORITHMS)
    out["population"] = _int(values["population"], "population", 2, 100_000)
    out["generations"] = _int(values["generations"], "generations", 1, 100_000)
    out["seed"] = _int(values["seed"], "seed", 0, 2**63 - 1)
    out["calibration"] = _mapping(values["calibration"], "calibration")
    out["ray"] = _ray(values["ray"])
    out["output"] = _str(values["output"], "output", optional=True)
    return out
