"""Replaying stored evaluations and searching a menu of schedules (search/replay.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.candidate import Candidate
from search.evaluator import Evaluation
from search.exhaustive import exhaustive_front
from search.replay import ScheduleMenu, TableEvaluator
from search.runner import RunnerConfig, SearchRunner
from search.space import SearchSpace
from tests.search.synthetic import SyntheticEvaluator, make_cost_model

SITES = ("down.0.conv", "mid.0.conv", "up.0.conv")
BLOCKS = {"down.0.conv": "down", "mid.0.conv": "mid", "up.0.conv": "up"}
COST = make_cost_model(SITES)
T = 1000
SCHEDULES = [(800, 600, 400, 200, 0), (999, 799, 449, 199, 49), (900, 625, 325, 125, 25)]


def candidate(schedule: tuple[int, ...], bits: int = 8) -> Candidate:
    return Candidate.uniform(schedule, SITES, bits, bits)


def test_table_replays_and_counts() -> None:
    c, d = candidate(SCHEDULES[0]), candidate(SCHEDULES[1])
    stored = Evaluation(c.key(), 0.5, 10.0, 1.0)
    table = TableEvaluator.from_evaluations([stored])
    out = table.evaluate([c, d, c])
    assert out[0] == stored and out[2] == stored
    assert not out[1].ok and out[1].key == d.key() and "not in the replay table" in (out[1].error or "")
    assert (table.hits, table.misses, len(table)) == (2, 1, 1)


def test_table_fallback_evaluates_each_candidate_once() -> None:
    real = SyntheticEvaluator(COST, T)
    table = TableEvaluator(fallback=real)
    batch = [candidate(s) for s in SCHEDULES]
    first = table.evaluate([*batch, batch[0]])
    second = table.evaluate(batch)
    assert [e.key for e in first] == [c.key() for c in [*batch, batch[0]]]
    assert first[:3] == second
    assert all(n == 1 for n in real.calls.values()) and len(real.calls) == 3
    assert (table.hits, table.misses) == (3, 4)


def test_table_does_not_store_failures() -> None:
    bad = candidate(SCHEDULES[0])
    real = SyntheticEvaluator(COST, T, error=[bad.key()])
    table = TableEvaluator(fallback=real)
    assert table.evaluate([bad])[0].error == "sampling diverged"
    assert table.evaluate([bad])[0].error == "sampling diverged"
    assert real.calls[bad.key()] == 2 and len(table) == 0


def test_a_replayed_search_ends_like_the_real_one() -> None:
    space = SearchSpace(T, (3,), SITES, (4, 8), "nonuniform", "block", BLOCKS)
    schedules = list(space.schedules(3))[:: max(1, space.schedule_count(3) // 4)][:4]
    menu = ScheduleMenu(schedules, SITES, (4, 8), BLOCKS)
    cost = ScheduleMenu.cost_model(COST)
    real = SyntheticEvaluator(COST, T)
    exhaustive = exhaustive_front(menu.space, menu.evaluator(real), cost)
    assert len(exhaustive.evaluations) == menu.size() == 4 * 2**6
    config = RunnerConfig(population=8, generations=50, seed=3, max_evaluations=25)
    direct = SearchRunner(config, menu.space, menu.evaluator(SyntheticEvaluator(COST, T)), cost).run()
    replay = TableEvaluator.from_evaluations(exhaustive.evaluations)
    replayed = SearchRunner(config, menu.space, replay, cost).run()
    assert replayed.front == direct.front and replayed.evaluated == direct.evaluated == 25
    assert replay.misses == 0


def test_menu_maps_candidates_and_prices_per_forward() -> None:
    menu = ScheduleMenu(SCHEDULES, SITES, (4, 6, 8), BLOCKS)
    assert menu.steps == 5 and menu.size() == 3 * 3**6
    assert menu.space.units == ("down", "mid", "up")
    proxy = menu.space.uniform_candidate(1, 6, 6, schedule=(2,))
    real = menu.to_real(proxy)
    assert real == candidate(SCHEDULES[2], 6)
    assert menu.from_real(real) == proxy
    assert menu.space.seed_candidates()[0].timesteps == (0,)  # the baselines use the first schedule
    per_forward = ScheduleMenu.cost_model(COST).cost(proxy).bitops
    assert per_forward * menu.steps == COST.cost(real).bitops
    with pytest.raises(ValueError, match="not on the menu"):
        menu.from_real(candidate((900, 100)))


def test_menu_evaluator_returns_menu_keys_with_real_quality() -> None:
    menu = ScheduleMenu(SCHEDULES, SITES, (4, 8), BLOCKS)
    real = SyntheticEvaluator(COST, T)
    proxies = list(menu.space.enumerate())[:5]
    out = menu.evaluator(real).evaluate(proxies)
    assert [e.key for e in out] == [p.key() for p in proxies]
    direct = SyntheticEvaluator(COST, T).evaluate([menu.to_real(p) for p in proxies])
    assert [e.quality for e in out] == [e.quality for e in direct]


@pytest.mark.parametrize(
    ("schedules", "message"),
    [([], "at least one"), ([(5, 0), (5, 0)], "twice"), ([(5, 0), (9, 5, 0)], "same K")],
)
def test_menu_rejects_bad_schedules(schedules: list[tuple[int, ...]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleMenu(schedules, SITES, (4, 8))


def test_new_modules_import_no_heavy_dependency() -> None:
    code = (
        "import sys\nimport search.replay, search.compare\n"
        "heavy = sorted({'torch', 'diffusers', 'ray', 'fastapi'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
