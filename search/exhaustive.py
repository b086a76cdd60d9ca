"""Exhaustive evaluation of a small space: the reference front a search is measured against.

For spaces that :meth:`SearchSpace.enumerate` can list (a few block genes × a few schedules), evaluate every
candidate through the same evaluator and keep the true Pareto front.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from search.candidate import Candidate
from search.cost import CostModel
from search.evaluator import Evaluation, Evaluator, evaluate_safely
from search.pareto import pareto_front
from search.space import DEFAULT_ENUMERATION_LIMIT, SearchSpace


@dataclass(frozen=True)
class ExhaustiveResult:
    """Every evaluation of the enumerated space and its feasible Pareto front."""

    evaluations: tuple[Evaluation, ...]
    candidates: Mapping[str, Candidate]
    front: tuple[Evaluation, ...]


def exhaustive_front(
    space: SearchSpace,
    evaluator: Evaluator,
    cost_model: CostModel,
    *,
    schedules: Iterable[Sequence[int]] | None = None,
    budget: float | None = None,
    batch_size: int = 256,
    limit: int = DEFAULT_ENUMERATION_LIMIT,
) -> ExhaustiveResult:
    """Evaluate every candidate of ``space`` (or of ``schedules`` × every precision) in batches.

    Raises ConfigError on ``limit`` when the space is larger than ``limit``.
    """
    candidates: dict[str, Candidate] = {}
    evaluations: list[Evaluation] = []
    stream = space.enumerate(schedules, limit=limit)
    while batch := list(itertools.islice(stream, batch_size)):
        evaluations += evaluate_safely(evaluator, batch, cost_model)
        candidates.update((c.key(), c) for c in batch)
    return ExhaustiveResult(tuple(evaluations), candidates, tuple(pareto_front(evaluations, budget)))
