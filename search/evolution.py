"""TMPQ-DM's own search: single-objective evolution (quality) under a hard BitOps budget.

After the public code (``EvolutionSearcher.search`` in ``sihouzi21c/TMPQ-DM``): keep the top ``select``
candidates ever evaluated (by quality, feasible only) as parents; each generation makes ``mutations`` mutants
(each gene re-drawn with probability ``mutation_prob``: a timestep within its group, a bit index among the
options; here also the K gene), ``crossovers`` children (each gene from either parent with probability 1/2)
and fills the population with random candidates. A candidate is legal when never drawn before and within
budget; over-budget candidates are rejected before evaluation. TMPQ-DM's defaults for a population of 50:
top-10 parents, 25 mutations, 10 crossovers, 15 random, mutation probability 0.25 (the paper's setting).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from search.candidate import Candidate
from search.encoding import Encoding
from search.errors import ConfigError
from search.problem import Outcome
from search.strategy import BudgetGuard, draw_unique, initial_population, initial_rng


@dataclass(frozen=True)
class EvolutionParams:
    """Settings of the TMPQ-DM evolution; ``None`` counts scale with the population (50 → 10/25/10).

    Attributes:
        select: parents kept (default 20% of the population, at least 2).
        mutations: mutants per generation (default 50% of the population).
        crossovers: crossover children per generation (default 20% of the population).
        mutation_prob: probability of re-drawing each gene in a mutant.
        max_tries: draws allowed per wanted candidate before giving up on the rest.
    """

    select: int | None = None
    mutations: int | None = None
    crossovers: int | None = None
    mutation_prob: float = 0.25
    max_tries: int = 10

    def __post_init__(self) -> None:
        for name in ("select", "mutations", "crossovers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"evolution.{name}", f"must be a non-negative integer, got {value!r}")
        if not (isinstance(self.mutation_prob, int | float) and 0.0 <= self.mutation_prob <= 1.0):
            raise ConfigError("evolution.mutation_prob", f"must be in [0, 1], got {self.mutation_prob!r}")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or self.max_tries < 1:
            raise ConfigError("evolution.max_tries", f"must be a positive integer, got {self.max_tries!r}")

    def resolve(self, population: int) -> tuple[int, int, int]:
        """(select, mutations, crossovers) for a population; ConfigError when they do not fit in it."""
        select = self.select if self.select is not None else max(2, round(0.2 * population))
        mutations = self.mutations if self.mutations is not None else round(0.5 * population)
        crossovers = self.crossovers if self.crossovers is not None else round(0.2 * population)
        if select < 1:
            raise ConfigError("evolution.select", "at least one parent is needed")
        if mutations + crossovers > population:
            raise ConfigError(
                "evolution.mutations",
                f"{mutations} mutations + {crossovers} crossovers exceed the population {population}",
            )
        return select, mutations, crossovers


class EvolutionStrategy:
    """TMPQ-DM's evolution as a :class:`~search.strategy.Strategy` (quality under a hard BitOps budget)."""

    def __init__(
        self,
        encoding: Encoding,
        guard: BudgetGuard,
        population: int,
        seed: int,
        params: EvolutionParams | None = None,
    ) -> None:
        self.encoding = encoding
        self.guard = guard
        self.population = population
        self.params = params or EvolutionParams()
        self.select, self.mutations, self.crossovers = self.params.resolve(population)
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self._seed = seed
        self._seen: set[str] = set()
        self._top: list[tuple[float, str, np.ndarray]] = []
        self._pending: list[tuple[np.ndarray, Candidate]] = []
        self._started = False

    @property
    def parents(self) -> list[str]:
        """Keys of the current parents, best first."""
        return [key for _, key, _ in self._top]

    def ask(self) -> list[Candidate]:
        if not self._started:
            self._started = True
            batch = initial_population(
                self.encoding, self.population, initial_rng(self._seed), self._seen, self.guard.allows
            )
        else:
            batch = self._offspring()
        self._pending = batch
        return [c for _, c in batch]

    def _offspring(self) -> list[tuple[np.ndarray, Candidate]]:
        batch: list[tuple[np.ndarray, Candidate]] = []
        tries = self.params.max_tries
        if self._top:
            batch += self._draw(self._mutant, self.mutations, tries)
            batch += self._draw(self._child, self.crossovers, tries)
        batch += self._draw(lambda: self.encoding.random(1, self._rng)[0], self.population - len(batch), tries)
        return batch

    def _draw(self, make: Callable[[], np.ndarray], n: int, tries: int) -> list[tuple[np.ndarray, Candidate]]:
        return draw_unique(make, n, self.encoding, self._seen, self.guard.allows, max(n, 1) * tries)

    def _parent(self) -> np.ndarray:
        return self._top[int(self._rng.integers(len(self._top)))][2]

    def _mutant(self) -> np.ndarray:
        x = self._parent().copy()
        redraw = self._rng.random(len(x)) < self.params.mutation_prob
        fresh = self._rng.integers(self.encoding.xl, self.encoding.xu + 1)
        x[redraw] = fresh[redraw]
        return x

    def _child(self) -> np.ndarray:
        a, b = self._parent(), self._parent()
        return np.where(self._rng.random(len(a)) < 0.5, a, b)

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        vectors = {c.key(): x for x, c in self._pending[: len(outcomes)]}
        self._pending = []
        ranked = list(self._top)
        for o in outcomes:
            if o.feasible(self.guard.budget) and math.isfinite(o.quality):
                ranked.append((o.quality, o.key, vectors[o.key]))
        ranked.sort(key=lambda item: (item[0], item[1]))
        self._top = ranked[: self.select]
