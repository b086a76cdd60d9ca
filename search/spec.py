"""The ``search`` section of a job spec: :class:`SearchSettings`, owned and validated here.

What the search explores and how: the bit options, the step counts K, the timestep grouping, the precision gene
granularity, the budget, the algorithm and its size, the seed. Built from a plain mapping with
:meth:`SearchSettings.from_dict`; a problem is a ``ConfigError`` naming the field (the job spec,
:mod:`workers.jobspec`, prefixes it with ``search.``). Checks that need the model (its number of training timesteps)
are in :meth:`SearchSettings.validate_for_model`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.errors import ConfigError
from search.fields import check_known, read_choice, read_int, read_int_list, shown

SEARCH_SETTINGS_VERSION = 1

#: The one floating-point bit option a job may offer besides 2..8 ("leave this tensor in FP16").
FP_OPTION = 16

GROUPINGS = ("nonuniform", "uniform")
GRANULARITIES = ("site", "block", "kind")
ALGORITHMS = ("nsga2", "tmpq_evolution", "random")
#: The solvers that run a candidate's schedule (and the FP reference): DDIM (η = 0; TMPQ-DM's) and DPM-Solver++(2M).
SOLVERS = ("ddim", "dpmsolver++")
#: The cost objective beside quality: analytic BitOps, or the milliseconds a latency table measured on the job's
#: run-time backend predicts (``evaluation.latency_backend``); ``Evaluation.cost(axis)`` reads either.
COSTS = ("bitops", "latency")

#: ``"W6A6@10"``: the BitOps of every site at W6A6 for 10 steps.
BUDGET_PATTERN = re.compile(r"^\s*W(\d{1,2})\s*A(\d{1,2})\s*@\s*(\d{1,6})\s*$", re.IGNORECASE)

#: Upper bounds of the search's size (a job cannot ask for unbounded work; the README lists them).
MAX_POPULATION = 1000
MAX_GENERATIONS = 1000
MAX_STEP_COUNTS = 16


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
        raise ConfigError(name, f"expected a number of BitOps or 'WxAy@K', got {shown(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(name, f"must be a positive finite number of BitOps, got {shown(value)}")
        return float(value)
    if isinstance(value, str):
        match = BUDGET_PATTERN.match(value)
        if not match:
            raise ConfigError(name, f"expected a number or a string like 'W6A6@10', got {shown(value)}")
        w, a, k = (int(g) for g in match.groups())
        for bits in (w, a):
            _check_bits(bits, name)
        if k < 1:
            raise ConfigError(name, f"step count must be at least 1 in {shown(value)}")
        return UniformBudget(w, a, k)
    raise ConfigError(name, f"expected a number or a string like 'W6A6@10', got {type(value).__name__}")


def _check_bits(bits: int, name: str) -> None:
    if not (2 <= bits <= 8 or bits == FP_OPTION):
        raise ConfigError(name, f"bit-width {bits} is not in 2..8 or {FP_OPTION}")


def _bit_option(value: Any, name: str) -> int:
    bits = read_int(value, name, 2, FP_OPTION)
    _check_bits(bits, name)
    return bits


def _step_count(value: Any, name: str) -> int:
    return read_int(value, name, 1, 100_000)


@dataclass(frozen=True)
class SearchSettings:
    """What the search explores and how (the ``search`` section of a job spec).

    Attributes:
        bit_options: the bit-widths the precision genes choose among, sorted ascending (each in 2..8 or 16).
        steps: the step counts K searched; one value or several (then K is itself a gene), sorted ascending.
        grouping: ``nonuniform`` (TMPQ-DM's quadratic groups) or ``uniform`` (equal widths).
        granularity: ``site`` (genes per quantizable site), ``block`` (sites of a block share genes) or ``kind``
            (sites of one kind of layer within a block share genes: attention, MLP, modulation, the rest).
        solver: what samples a candidate's timesteps, its uniform baselines and the FP reference: ``ddim`` or
            ``dpmsolver++`` (DPM-Solver++(2M)).
        budget: ``None``, BitOps, or :class:`UniformBudget` (``"W6A6@10"``); a constraint in BitOps whatever
            ``cost`` is.
        cost: the second objective, ``bitops`` or ``latency`` (milliseconds predicted by the latency table the
            job measures on its run-time backend).
        algorithm: ``nsga2``, ``tmpq_evolution`` or ``random``.
        population: individuals per generation (2..:data:`MAX_POPULATION`).
        generations: number of generations (1..:data:`MAX_GENERATIONS`).
        seed: seed of the search (and of its checkpoints' RNG state).
        version: format version of this section.
    """

    bit_options: tuple[int, ...] = (5, 6, 7, 8)
    steps: tuple[int, ...] = (10,)
    grouping: str = "nonuniform"
    granularity: str = "site"
    solver: str = "ddim"
    budget: float | UniformBudget | None = None
    cost: str = "bitops"
    algorithm: str = "nsga2"
    population: int = 50
    generations: int = 20
    seed: int = 0
    version: int = SEARCH_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != SEARCH_SETTINGS_VERSION:
            raise ConfigError("version", f"{self.version!r} is not supported (expected {SEARCH_SETTINGS_VERSION})")
        put = object.__setattr__
        put(self, "bit_options", read_int_list(self.bit_options, "bit_options", _bit_option))
        if not any(2 <= b <= 8 for b in self.bit_options):
            raise ConfigError("bit_options", "needs at least one width in 2..8 (16 alone quantizes nothing)")
        put(self, "steps", read_int_list(self.steps, "steps", _step_count, max_items=MAX_STEP_COUNTS))
        put(self, "grouping", read_choice(self.grouping, "grouping", GROUPINGS))
        put(self, "granularity", read_choice(self.granularity, "granularity", GRANULARITIES))
        put(self, "solver", read_choice(self.solver, "solver", SOLVERS))
        if not isinstance(self.budget, UniformBudget):
            put(self, "budget", parse_budget(self.budget))
        put(self, "cost", read_choice(self.cost, "cost", COSTS))
        put(self, "algorithm", read_choice(self.algorithm, "algorithm", ALGORITHMS))
        put(self, "population", read_int(self.population, "population", 2, MAX_POPULATION))
        put(self, "generations", read_int(self.generations, "generations", 1, MAX_GENERATIONS))
        put(self, "seed", read_int(self.seed, "seed", 0, 2**63 - 1))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSettings:
        """From a plain mapping; unknown keys, wrong types and bad values raise ConfigError naming the field."""
        if not isinstance(data, Mapping):
            raise ConfigError("", f"expected a mapping, got {type(data).__name__}")
        check_known(data, tuple(f.name for f in dataclasses.fields(cls)), "")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready form; ``from_dict(to_dict())`` gives equal settings."""
        return {
            "bit_options": list(self.bit_options),
            "steps": self.steps[0] if len(self.steps) == 1 else list(self.steps),
            "grouping": self.grouping,
            "granularity": self.granularity,
            "solver": self.solver,
            "budget": str(self.budget) if isinstance(self.budget, UniformBudget) else self.budget,
            "cost": self.cost,
            "algorithm": self.algorithm,
            "population": self.population,
            "generations": self.generations,
            "seed": self.seed,
            "version": self.version,
        }

    def replace(self, **changes: Any) -> SearchSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def max_steps(self) -> int:
        return max(self.steps)

    @property
    def quantized_bits(self) -> tuple[int, ...]:
        """The bit options a supernet calibrates (2..8; 16 means "leave in FP")."""
        return tuple(b for b in self.bit_options if 2 <= b <= 8)

    def validate_for_model(self, num_train_timesteps: int) -> None:
        """Check the step counts (and a ``WxAy@K`` budget) against the model's T; ConfigError otherwise.

        Every K must be ≤ T and, with the chosen grouping, leave no timestep group empty.
        """
        from search.space import timestep_groups  # local: space imports this module's constants

        for k in self.steps:
            if k > num_train_timesteps:
                raise ConfigError("steps", f"K={k} is larger than the model's {num_train_timesteps} timesteps")
            try:
                timestep_groups(num_train_timesteps, k, self.grouping)
            except ConfigError as exc:
                raise ConfigError("steps", exc.reason) from None
        if isinstance(self.budget, UniformBudget) and self.budget.steps > num_train_timesteps:
            raise ConfigError("budget", f"{self.budget} has more steps than the model's {num_train_timesteps}")
