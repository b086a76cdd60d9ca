"""Pareto utilities for the two objectives (quality, cost), both minimised; the cost axis is BitOps or, for a job
that searches latency, the milliseconds of its measured latency table (``Evaluation.cost(axis)``).

- :func:`non_dominated_mask`: non-dominated filter with constraints (feasible first, as pymoo does it).
- :func:`pareto_front`: the feasible non-dominated evaluations (failed and over-budget ones never appear).
- :func:`hypervolume_2d`: exact 2-D hypervolume against a fixed reference point.
- :class:`ObjectiveScale`: the normalisation under which the search reports hypervolume. BitOps span orders of
  magnitude (bits² × steps), so they are taken on a log scale between the cheapest and the dearest candidate
  of the space: ``x = log(bitops / low) / log(high / low)`` ∈ [0, 1]. Quality is divided by a fixed reference
  quality ``q_ref``: ``y = quality / q_ref``. The reference point is ``(1 + margin, 1 + margin)`` (margin
  0.1), so a point with quality above ``1.1 · q_ref`` adds nothing. Both ends and ``q_ref`` are fixed for a
  job, so the hypervolume history is comparable across generations, resumes and algorithms given the same
  scale.
- :func:`knee_index` / :func:`knee_point`: the front point farthest from the line between the two extremes,
  in min-max normalised objective space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from search.evaluator import Evaluation
from search.spec import COSTS


def non_dominated_mask(
    objectives: Sequence[Sequence[float]] | np.ndarray, cv: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``objectives`` (minimisation, any number of objectives).

    With constraint violations ``cv`` (≤ 0 feasible): if any row is feasible, only feasible rows can be kept
    and dominance is among them; otherwise the rows of least violation are kept. Equal rows do not dominate
    each other.
    """
    n_rows = len(objectives)
    arr = np.asarray(objectives, dtype=float).reshape(n_rows, -1) if n_rows else np.zeros((0, 2))
    n = len(arr)
    allowed = np.ones(n, dtype=bool)
    if cv is not None and n:
        violation = np.maximum(np.asarray(cv, dtype=float), 0.0)
        feasible = violation <= 0
        allowed = feasible if feasible.any() else violation == violation.min()
    mask = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(allowed)
    if arr.shape[1] == 2:
        mask[rows[_non_dominated_2d(arr[rows])]] = True
        return mask
    candidates = arr[rows]
    for i in rows:
        row = arr[i]
        dominated = np.all(candidates <= row, axis=1) & np.any(candidates < row, axis=1)
        mask[i] = not dominated.any()
    return mask


def _non_dominated_2d(points: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated 2-D points, by one sweep in order of the first objective (O(n log n))."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    keep = np.zeros(len(points), dtype=bool)
    best_before = math.inf  # least second objective among points with a strictly smaller first objective
    i = 0
    while i < len(order):
        x = points[order[i], 0]
        j = i
        while j < len(order) and points[order[j], 0] == x:
            j += 1
        group_best = points[order[i], 1]  # sorted: the group's least second objective comes first
        for k in order[i:j]:
            keep[k] = points[k, 1] < best_before and points[k, 1] == group_best
        best_before = min(best_before, group_best)
        i = j
    return keep


def is_feasible(evaluation: Evaluation, budget: float | None = None, axis: str = "bitops") -> bool:
    """Succeeded, within the BitOps budget when there is one, and priced on ``axis``."""
    return evaluation.ok and (budget is None or evaluation.bitops <= budget) and math.isfinite(evaluation.cost(axis))


def pareto_front(
    evaluations: Iterable[Evaluation], budget: float | None = None, axis: str = "bitops"
) -> list[Evaluation]:
    """Feasible non-dominated evaluations in (quality, cost on ``axis``), sorted by that cost, then quality, then key.

    Failed evaluations and those over ``budget`` (BitOps, whatever the axis) are never part of it (an empty list if
    none is feasible).
    """
    if axis not in COSTS:
        raise ValueError(f"unknown cost axis {axis!r} (expected one of {COSTS})")
    feasible = sorted(
        (e for e in evaluations if is_feasible(e, budget, axis)), key=lambda e: (e.cost(axis), e.quality, e.key)
    )
    if not feasible:
        return []
    mask = non_dominated_mask([(e.quality, e.cost(axis)) for e in feasible])
    return [e for e, keep in zip(feasible, mask, strict=True) if keep]


def hypervolume_2d(points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float]) -> float:
    """Exact area dominated by ``points`` (minimisation) and bounded by ``reference``.

    Points not strictly better than the reference in both objectives contribute nothing.
    """
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    rx, ry = float(reference[0]), float(reference[1])
    arr = arr[(arr[:, 0] < rx) & (arr[:, 1] < ry)]
    area, best_y = 0.0, ry
    for x, y in sorted((float(px), float(py)) for px, py in arr):
        if y < best_y:
            area += (rx - x) * (best_y - y)
            best_y = y
    return area


@dataclass(frozen=True)
class ObjectiveScale:
    """Normalisation of (quality, cost) for hypervolume; see the module docstring.

    Attributes:
        bitops_low: cost of the cheapest candidate of the space (x = 0), in BitOps or milliseconds (``axis``).
        bitops_high: cost of the dearest candidate of the space (x = 1).
        quality_ref: quality mapped to y = 1.
        margin: the reference point is ``(1 + margin, 1 + margin)``.
        axis: the cost axis (``bitops`` or ``latency``).
    """

    bitops_low: float
    bitops_high: float
    quality_ref: float
    margin: float = 0.1
    axis: str = "bitops"

    def __post_init__(self) -> None:
        if not (0 < self.bitops_low <= self.bitops_high) or not math.isfinite(self.bitops_high):
            raise ValueError(f"need 0 < bitops_low <= bitops_high, got {self.bitops_low}, {self.bitops_high}")
        if not (self.quality_ref > 0 and math.isfinite(self.quality_ref)):
            raise ValueError(f"quality_ref must be positive and finite, got {self.quality_ref}")

    @property
    def reference(self) -> tuple[float, float]:
        return (1.0 + self.margin, 1.0 + self.margin)

    def transform(self, quality: float, bitops: float) -> tuple[float, float]:
        """(x, y) = (log-normalised BitOps, quality / q_ref)."""
        span = math.log(self.bitops_high / self.bitops_low)
        x = math.log(bitops / self.bitops_low) / span if span > 0 else 0.0
        return (x, quality / self.quality_ref)

    def hypervolume(self, front: Iterable[Evaluation]) -> float:
        """Hypervolume of evaluations (normally a front) in the normalised space."""
        points = [self.transform(e.quality, e.cost(self.axis)) for e in front if e.ok]
        return hypervolume_2d(points, self.reference) if points else 0.0


def knee_index(points: Sequence[Sequence[float]] | np.ndarray) -> int:
    """Index of the knee of a 2-D front (minimisation).

    Both objectives are min-max normalised over the points; the knee is the point farthest from the straight
    line between the two extremes, on the side of the ideal point. With fewer than three points, or when no
    point lies below the line, it is the point of smallest normalised sum (ties: the first).
    """
    arr = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(arr) == 0:
        raise ValueError("knee of an empty front")
    span = arr.max(axis=0) - arr.min(axis=0)
    norm = (arr - arr.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = norm[np.argmin(norm[:, 0])], norm[np.argmin(norm[:, 1])]
    direction = b - a
    length = float(np.hypot(*direction))
    if len(arr) < 3 or length == 0:
        return int(np.argmin(norm.sum(axis=1)))
    # Signed distance: positive on the ideal side of the line from a (best x) to b (best y).
    rel = norm - a
    distance = (rel[:, 0] * direction[1] - rel[:, 1] * direction[0]) / length
    best = int(np.argmax(distance))
    return best if distance[best] > 0 else int(np.argmin(norm.sum(axis=1)))


def knee_point(front: Sequence[Evaluation], log_bitops: bool = True, axis: str = "bitops") -> Evaluation:
    """The knee of a front of evaluations; the cost on ``axis`` on a log scale by default (as for the
    hypervolume)."""
    points = [(math.log(e.cost(axis)) if log_bitops else e.cost(axis), e.quality) for e in front]
    return front[knee_index(points)]
