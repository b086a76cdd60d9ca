"""Non-dominated filtering, hypervolume and knee point on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.evaluator import Evaluation
from search.pareto import (
    ObjectiveScale,
    hypervolume_2d,
    knee_index,
    knee_point,
    non_dominated_mask,
    pareto_front,
)


def ev(key: str, quality: float, bitops: float, error: str | None = None) -> Evaluation:
    return Evaluation(key, quality, bitops, 0.0, {}, error)


def test_hypervolume_of_two_points() -> None:
    # Union of [1,4]x[3,4] (area 3) and [2,4]x[1,4] (area 6), overlapping in [2,4]x[3,4] (area 2): 7.
    assert hypervolume_2d([(1, 3), (2, 1)], (4, 4)) == pytest.approx(7.0)


def test_hypervolume_ignores_dominated_and_outside_points() -> None:
    points = [(1, 3), (2, 1), (3, 2), (5, 0), (0, 5), (2, 1)]
    assert hypervolume_2d(points, (4, 4)) == pytest.approx(7.0)
    assert hypervolume_2d([], (4, 4)) == 0.0
    assert hypervolume_2d([(4, 1)], (4, 4)) == 0.0  # on the reference line: nothing


def test_hypervolume_of_a_staircase() -> None:
    # (5-1)(6-5) + (5-2)(5-3) + (5-4)(3-1) = 4 + 6 + 2
    assert hypervolume_2d([(4, 1), (1, 5), (2, 3)], (5, 6)) == pytest.approx(12.0)


def test_non_dominated_mask_plain_and_with_constraints() -> None:
    F = [(1, 1), (0, 0), (2, 2), (0, 3)]
    assert non_dominated_mask(F).tolist() == [False, True, False, False]
    assert non_dominated_mask([(1, 2), (2, 1), (1, 2)]).tolist() == [True, True, True]
    # Feasible first: the infeasible (0, 0) cannot dominate.
    assert non_dominated_mask(F[:3], cv=[0, 1, 0]).tolist() == [True, False, False]
    # None feasible: the least violating ones, then dominance among them.
    assert non_dominated_mask(F[:3], cv=[2, 1, 1]).tolist() == [False, True, False]


def test_pareto_front_excludes_failed_and_over_budget() -> None:
    evaluations = [
        ev("a", 1.0, 10),
        ev("b", 0.5, 20),
        ev("c", 2.0, 30),
        ev("d", math.nan, 1, "diverged"),
        ev("e", 0.1, 100),
        ev("f", 0.05, 5, "crashed"),
    ]
    assert [e.key for e in pareto_front(evaluations, budget=50)] == ["a", "b"]
    assert [e.key for e in pareto_front(evaluations)] == ["a", "b", "e"]
    assert pareto_front([ev("d", math.nan, 1, "x")]) == []


def test_objective_scale_and_its_hypervolume() -> None:
    scale = ObjectiveScale(bitops_low=10, bitops_high=1000, quality_ref=2.0)
    assert scale.transform(1.0, 100) == pytest.approx((0.5, 0.5))
    assert scale.transform(2.0, 10) == pytest.approx((0.0, 1.0))
    assert scale.reference == (1.1, 1.1)
    assert scale.hypervolume([ev("a", 1.0, 100)]) == pytest.approx(0.6 * 0.6)
    assert scale.hypervolume([ev("a", 1.0, 100), ev("x", math.nan, 10, "failed")]) == pytest.approx(0.36)
    with pytest.raises(ValueError):
        ObjectiveScale(10, 5, 1.0)


def test_knee_of_a_hand_example() -> None:
    # Normalised: (0,1), (0.1,0.4), (0.3,0.25), (1,0); distances to x+y=1 ∝ 0, 0.5, 0.45, 0.
    points = [(0, 10), (1, 4), (3, 2.5), (10, 0)]
    assert knee_index(points) == 1
    assert knee_index(points[::-1]) == 2
    assert knee_index([(1, 1)]) == 0
    assert knee_index([(0, 1), (1, 0)]) == 0  # two points: smallest normalised sum, first on ties


def test_knee_point_of_evaluations_uses_log_bitops() -> None:
    front = [ev("cheap", 10.0, 1e6), ev("mid", 1.0, 1e7), ev("dear", 0.9, 1e9)]
    assert knee_point(front).key == "mid"
    assert knee_point(front, log_bitops=False).key == "mid"


def test_two_objective_sweep_agrees_with_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.integers(0, 6, size=(40, 2)).astype(float)  # many ties and duplicates
        expected = [not any((q <= p).all() and (q < p).any() for q in points) for p in points]
        assert non_dominated_mask(points).tolist() == expected
        three = np.column_stack([points, np.zeros(len(points))])  # the general path, same answer
        assert non_dominated_mask(three).tolist() == expected
