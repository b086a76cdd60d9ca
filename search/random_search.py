"""Random search: the baseline every other algorithm must beat at the same number of evaluations.

Generation 0 is the shared initial population (uniform-precision DDIM seeds, then random); every later
generation draws ``population`` new random candidates within the budget. Outcomes teach it nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.candidate import Candidate
from search.encoding import Encoding
from search.problem import Outcome
from search.strategy import BudgetGuard, draw_unique, initial_population, initial_rng


class RandomStrategy:
    """Uniform random candidates (each gene uniform in its bounds), never the same one twice."""

    def __init__(self, encoding: Encoding, guard: BudgetGuard, population: int, seed: int, max_tries: int = 10) -> None:
        self.encoding = encoding
        self.guard = guard
        self.population = population
        self.max_tries = max_tries
        self._seed = seed
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        self._seen: set[str] = set()
        self._started = False

    def ask(self) -> list[Candidate]:
        if not self._started:
            self._started = True
            batch = initial_population(
                self.encoding, self.population, initial_rng(self._seed), self._seen, self.guard.allows
            )
        else:
            batch = draw_unique(
                lambda: self.encoding.random(1, self._rng)[0],
                self.population,
                self.encoding,
                self._seen,
                self.guard.allows,
                self.population * self.max_tries,
            )
        return [c for _, c in batch]

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        """Random search ignores outcomes."""
