"""Common hypervolume scale, hypervolume ratios and dominance (search/compare.py), on hand-computed examples."""

from __future__ import annotations

import math

import pytest

from search.compare import best_within, dominates, dominating, hypervolume_ratio, nadir_scale, summary
from search.evaluator import Evaluation
from search.pareto import ObjectiveScale


def ev(key: str, quality: float, bitops: float, error: str | None = None) -> Evaluation:
    return Evaluation(key, quality, bitops, 0.0, {}, error)


FRONT = [ev("a", 4.0, 1.0), ev("b", 2.0, 10.0), ev("c", 1.0, 100.0)]


def test_nadir_scale_takes_the_worst_quality_of_the_front() -> None:
    scale = nadir_scale([*FRONT, ev("x", math.nan, 1.0, "boom")], 1.0, 100.0)
    assert scale == ObjectiveScale(1.0, 100.0, 4.0)
    with pytest.raises(ValueError, match="no successful point"):
        nadir_scale([ev("x", math.nan, 1.0, "boom")], 1.0, 100.0)


def test_hypervolume_ratio_by_hand() -> None:
    # Normalised: a = (0, 1), b = (0.5, 0.5), c = (1, 0.25); reference (1.1, 1.1).
    scale = nadir_scale(FRONT, 1.0, 100.0)
    full = 1.1 * 0.1 + 0.6 * 0.5 + 0.1 * 0.25  # staircase from the cheapest point
    assert scale.hypervolume(FRONT) == pytest.approx(full)
    assert hypervolume_ratio(FRONT, FRONT, scale) == pytest.approx(1.0)
    only_b = 0.6 * 0.6
    assert hypervolume_ratio([FRONT[1], ev("d", 3.0, 50.0)], FRONT, scale) == pytest.approx(only_b / full)
    assert hypervolume_ratio([], FRONT, scale) == 0.0
    with pytest.raises(ValueError, match="zero hypervolume"):
        hypervolume_ratio(FRONT, [ev("z", 9.0, 100.0)], scale)


def test_dominance() -> None:
    a, b = ev("a", 1.0, 10.0), ev("b", 2.0, 10.0)
    assert dominates(a, b) and not dominates(b, a)
    assert not dominates(a, ev("a2", 1.0, 10.0))  # equal points do not dominate each other
    assert not dominates(ev("c", 0.5, 20.0), a) and not dominates(a, ev("c", 0.5, 20.0))
    assert not dominates(ev("f", math.nan, 1.0, "boom"), b) and not dominates(a, ev("f", math.nan, 99.0, "boom"))
    assert dominating(FRONT, ev("p", 3.0, 50.0)) == [FRONT[1]]


def test_best_within_a_budget() -> None:
    assert best_within(FRONT) == FRONT[2]
    assert best_within(FRONT, 10.0) == FRONT[1]
    assert best_within(FRONT, 0.5) is None
    assert best_within([ev("x", 1.0, 5.0), ev("y", 1.0, 3.0)]) == ev("y", 1.0, 3.0)  # ties: fewer BitOps


def test_summary() -> None:
    assert summary([3.0, 1.0, 2.0, 10.0]) == {"mean": 4.0, "min": 1.0, "median": 2.5, "max": 10.0}
    assert summary([2.0])["median"] == 2.0
    with pytest.raises(ValueError):
        summary([])
