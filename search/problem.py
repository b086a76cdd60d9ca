"""The search as a pymoo problem: bounds, objectives and constraints, repair and duplicate elimination.

Evaluation happens outside pymoo (ask/tell): :class:`SearchProblem` only carries the bounds, and
:func:`objectives` turns outcomes into pymoo's ``F`` (quality, cost: BitOps or predicted milliseconds) and ``G``
rows:

- ``g_budget = (bitops − budget) / budget`` (≤ 0 feasible; normalised so that it is commensurate with the
  other constraint; −1 without a budget),
- ``g_failed = 1`` for a failed or unevaluated candidate, −1 otherwise.

A failed candidate gets quality :data:`FAILED_QUALITY` (finite, so pymoo's sorting stays well defined).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair

from search.encoding import Encoding

#: Quality given to pymoo for a candidate without a usable quality (failed, or over budget and not evaluated).
FAILED_QUALITY = 1e30


@dataclass(frozen=True)
class Outcome:
    """What a strategy learns about one asked candidate.

    Attributes:
        key: the candidate's key.
        quality: measured quality; NaN when failed or not evaluated (over budget).
        bitops: analytic BitOps (what the budget constrains).
        failed: evaluation failed (error or non-finite quality).
        evaluated: the evaluator measured it (False: skipped for being over budget, or never evaluated).
        cost: the cost objective when it is not BitOps (predicted milliseconds); ``None``: BitOps.
    """

    key: str
    quality: float
    bitops: float
    failed: bool = False
    evaluated: bool = True
    cost: float | None = None

    @property
    def objective(self) -> float:
        """The second objective: :attr:`cost`, or BitOps."""
        return self.bitops if self.cost is None else self.cost

    def feasible(self, budget: float | None) -> bool:
        return self.evaluated and not self.failed and (budget is None or self.bitops <= budget)


def objectives(outcomes: Sequence[Outcome], budget: float | None) -> tuple[np.ndarray, np.ndarray]:
    """pymoo's ``F`` (n × 2) and ``G`` (n × 2) for outcomes."""
    F = np.empty((len(outcomes), 2))
    G = np.empty((len(outcomes), 2))
    for i, o in enumerate(outcomes):
        usable = o.evaluated and not o.failed
        F[i] = (o.quality if usable else FAILED_QUALITY, o.objective)
        G[i, 0] = (o.bitops - budget) / budget if budget is not None else -1.0
        G[i, 1] = -1.0 if usable else 1.0
    return F, G


class SearchProblem(Problem):
    """Bounds of the integer genotype; two objectives, two inequality constraints. Never evaluates."""

    def __init__(self, encoding: Encoding) -> None:
        super().__init__(
            n_var=encoding.n_var,
            n_obj=2,
            n_ieq_constr=2,
            xl=encoding.xl.astype(float),
            xu=encoding.xu.astype(float),
            vtype=int,
        )

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("evaluation happens outside pymoo, through the Evaluator (ask/tell)")


class EncodingRepair(Repair):
    """Keeps every vector a valid genotype (rounding, clipping, canonical timestep genes)."""

    def __init__(self, encoding: Encoding) -> None:
        super().__init__()
        self.encoding = encoding

    def _do(self, problem: Problem, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.encoding.repair(x).astype(float)


class KeyDuplicateElimination(DuplicateElimination):
    """Duplicates are vectors that decode to the same candidate (same ``Candidate.key()``).

    Besides pymoo's checks (within the offspring, against the population), an offspring whose key is in
    :attr:`evaluated` (every candidate the search has already been told about) is a duplicate too, so pymoo
    mates again instead of spending an offspring slot on a candidate whose outcome is known: with a small
    evaluation budget every slot of a generation then brings a new candidate. The set is part of the pickled
    algorithm, so a resumed search eliminates exactly as an uninterrupted one.
    """

    def __init__(self, encoding: Encoding) -> None:
        super().__init__()
        self.encoding = encoding
        self.evaluated: set[str] = set()

    def remember(self, keys: Iterable[str]) -> None:
        """Mark ``keys`` as told: offspring decoding to them are duplicates from now on."""
        self.evaluated.update(keys)

    def _key(self, individual: Any) -> str:
        return self.encoding.decode(individual.X).key()

    def _do(self, pop: Any, other: Any, is_duplicate: np.ndarray) -> np.ndarray:
        seen = {self._key(ind) for ind in other} if other is not None else set()
        for i, ind in enumerate(pop):
            key = self._key(ind)
            if key in seen or (other is None and key in self.evaluated):
                is_duplicate[i] = True
            elif other is None:
                seen.add(key)
        return is_duplicate
