"""The search algorithms by name: ``nsga2``, ``tmpq_evolution`` and ``random``."""

from __future__ import annotations

from search.encoding import Encoding
from search.errors import ConfigError
from search.evolution import EvolutionParams, EvolutionStrategy
from search.nsga2 import NSGA2Strategy
from search.random_search import RandomStrategy
from search.spec import ALGORITHMS
from search.strategy import BudgetGuard, Strategy


def make_strategy(
    algorithm: str,
    encoding: Encoding,
    guard: BudgetGuard,
    population: int,
    seed: int,
    evolution: EvolutionParams | None = None,
) -> Strategy:
    """A fresh strategy; all three start from the same initial population for the same seed."""
    if algorithm == "nsga2":
        return NSGA2Strategy(encoding, guard, population, seed)
    if algorithm == "tmpq_evolution":
        return EvolutionStrategy(encoding, guard, population, seed, evolution)
    if algorithm == "random":
        max_tries = (evolution or EvolutionParams()).max_tries
        return RandomStrategy(encoding, guard, population, seed, max_tries)
    raise ConfigError("algorithm", f"must be one of {list(ALGORITHMS)}, got {algorithm!r}")
