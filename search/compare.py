"""Comparing search results: a common hypervolume scale, hypervolume ratios and dominance of single points.

Hypervolumes of different searches are comparable only under one :class:`~search.pareto.ObjectiveScale`.
:func:`nadir_scale` builds the usual one for a comparison: BitOps between the cheapest and the dearest
candidate of the space, quality divided by the worst quality on a reference front (its nadir), so the
reference point sits just beyond the reference front (``1 + margin`` times its nadir quality).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from search.evaluator import Evaluation
from search.pareto import ObjectiveScale, pareto_front


def nadir_scale(
    reference_front: Iterable[Evaluation], bitops_low: float, bitops_high: float, margin: float = 0.1
) -> ObjectiveScale:
    """The scale whose quality reference is the worst quality on ``reference_front``'s successful points.

    Raises ValueError when the front has no successful point with a positive quality.
    """
    qualities = [e.quality for e in reference_front if e.ok]
    if not qualities or max(qualities) <= 0:
        raise ValueError("the reference front has no successful point with a positive quality")
    return ObjectiveScale(bitops_low, bitops_high, max(qualities), margin)


def hypervolume_ratio(points: Iterable[Evaluation], reference: Iterable[Evaluation], scale: ObjectiveScale) -> float:
    """Hypervolume of the front of ``points`` / that of the front of ``reference``, under ``scale``.

    Both fronts are taken without a budget: filter the inputs first (``pareto_front(e, budget)``) to compare
    within one. Raises ValueError when the reference has no hypervolume.
    """
    denominator = scale.hypervolume(pareto_front(reference))
    if denominator <= 0:
        raise ValueError("the reference front has zero hypervolume under this scale")
    return scale.hypervolume(pareto_front(points)) / denominator


def dominates(a: Evaluation, b: Evaluation) -> bool:
    """``a`` is at least as good as ``b`` in quality and BitOps and better in one (both must have succeeded)."""
    if not (a.ok and b.ok):
        return False
    return a.quality <= b.quality and a.bitops <= b.bitops and (a.quality < b.quality or a.bitops < b.bitops)


def dominating(front: Iterable[Evaluation], point: Evaluation) -> list[Evaluation]:
    """The points of ``front`` that dominate ``point``."""
    return [e for e in front if dominates(e, point)]


def best_within(evaluations: Iterable[Evaluation], budget: float | None = None) -> Evaluation | None:
    """The successful evaluation of least quality within ``budget`` (ties: fewer BitOps, then key); None if none."""
    feasible = [e for e in evaluations if e.ok and (budget is None or e.bitops <= budget)]
    return min(feasible, key=lambda e: (e.quality, e.bitops, e.key)) if feasible else None


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, minimum, median and maximum of a non-empty list (for per-seed figures)."""
    if not values:
        raise ValueError("summary of an empty list")
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"mean": sum(ordered) / n, "min": ordered[0], "median": median, "max": ordered[-1]}
