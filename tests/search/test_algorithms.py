"""Algorithm settings, the TMPQ-DM evolution's mechanics, evaluator edge cases and result records."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from search.candidate import Candidate
from search.encoding import Encoding
from search.errors import ConfigError
from search.evaluator import Evaluation, EvaluatorUnavailableError, evaluate_safely
from search.evolution import EvolutionParams
from search.nsga2 import NSGA2Strategy
from search.problem import Outcome
from search.runner import RunnerConfig, SearchRunner
from search.space import SearchSpace
from search.strategy import BudgetGuard, initial_population, initial_rng
from tests.search.synthetic import SyntheticEvaluator, make_cost_model

SITES = ("down.0.conv", "mid.0.conv", "up.0.conv")
SPACE = SearchSpace(1000, (5, 10), SITES, (4, 6, 8))
COST = make_cost_model(SITES)


def test_evolution_defaults_are_tmpq_dms() -> None:
    params = EvolutionParams()
    assert params.resolve(50) == (10, 25, 10)  # top-10 parents, 25 mutations, 10 crossovers, 15 random
    assert params.mutation_prob == 0.25
    assert EvolutionParams(select=4, mutations=6, crossovers=2).resolve(12) == (4, 6, 2)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"mutations": 40, "crossovers": 20}, "evolution.mutations"),
        ({"mutation_prob": 1.5}, "evolution.mutation_prob"),
        ({"select": -1}, "evolution.select"),
        ({"max_tries": 0}, "evolution.max_tries"),
    ],
)
def test_bad_evolution_settings_name_the_field(params: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunnerConfig(algorithm="tmpq_evolution", population=50, evolution=EvolutionParams(**params))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"algorithm": "sa"}, "algorithm"),
        ({"population": 1}, "population"),
        ({"generations": 0}, "generations"),
        ({"max_evaluations": 0}, "max_evaluations"),
        ({"budget": "6 bits"}, "budget"),
        ({"quality_ref": -1.0}, "quality_ref"),
    ],
)
def test_bad_runner_settings_name_the_field(settings: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunnerConfig(**settings)
    assert info.value.field == field


def test_tmpq_evolution_defaults_to_the_w6a6_budget() -> None:
    runner = SearchRunner(
        RunnerConfig(algorithm="tmpq_evolution", population=10, generations=1),
        SPACE,
        SyntheticEvaluator(COST, 1000),
        COST,
    )
    assert runner.budget == COST.uniform_cost(6, 6, 10).bitops
    assert SearchRunner(RunnerConfig(), SPACE, SyntheticEvaluator(COST, 1000), COST).budget is None


def test_evolution_parents_are_the_best_feasible_so_far() -> None:
    runner = SearchRunner(
        RunnerConfig(
            algorithm="tmpq_evolution", population=20, generations=4, seed=1, evolution=EvolutionParams(select=5)
        ),
        SPACE,
        SyntheticEvaluator(COST, 1000),
        COST,
    )
    runner.run()
    ranked = sorted(
        (e.evaluation.quality, e.evaluation.key)
        for e in runner.cache.claimed()
        if e.evaluation.ok and e.evaluation.bitops <= runner.budget
    )
    assert runner.checkpoint().strategy.parents == [key for _, key in ranked[:5]]


class _Unreliable:
    """Drops one candidate from its answer and reports a wrong BitOps figure for another."""

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        out = [Evaluation(c.key(), 1.0, 123.0, 0.0) for c in candidates]
        return out[1:]


def test_evaluate_safely_records_missing_results_and_uses_the_cost_model() -> None:
    candidates = SPACE.seed_candidates()[:3]
    results = evaluate_safely(_Unreliable(), candidates, COST)
    assert [e.key for e in results] == [c.key() for c in candidates]
    assert results[0].error == "the evaluator returned no result" and not results[0].ok
    assert results[1].ok and results[1].bitops == COST.cost(candidates[1]).bitops


class _Gone:
    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        raise EvaluatorUnavailableError("the worker pool is gone")


def test_an_unavailable_evaluator_stops_the_search() -> None:
    runner = SearchRunner(RunnerConfig(population=6, generations=2), SPACE, _Gone(), COST)
    with pytest.raises(EvaluatorUnavailableError):
        runner.run()


def test_evaluation_round_trip_and_sanitising() -> None:
    e = Evaluation("k", math.nan, 10.0, 2.0, {"psnr": 20.5})
    assert not e.ok and e.sanitized().error and e.sanitized().error.startswith("quality is not finite")
    data = e.sanitized().to_dict()
    assert data["quality"] is None
    back = Evaluation.from_dict(data)
    assert math.isnan(back.quality) and back.error == e.sanitized().error and back.extra == {"psnr": 20.5}
    ok = Evaluation("k", 0.5, 10.0, 2.0)
    assert Evaluation.from_dict(ok.to_dict()) == ok and ok.sanitized() is ok


def test_nsga2_offspring_are_never_candidates_it_was_already_told_about() -> None:
    """Archive-wide duplicate elimination: every slot of a generation goes to a candidate not seen before."""
    small = SearchSpace(10, (2,), ("a",), (4, 8), "nonuniform", "site")  # 64 candidates: repeats are likely
    cost = make_cost_model(small.sites)
    strategy = NSGA2Strategy(Encoding(small), BudgetGuard(cost, None), population=6, seed=3)
    evaluator = SyntheticEvaluator(cost, 1000)
    told: set[str] = set()
    for _ in range(6):
        asked = strategy.ask()
        keys = [c.key() for c in asked]
        assert keys
        assert len(set(keys)) == len(keys)
        assert not told & set(keys)
        outcomes = [Outcome(e.key, e.quality, e.bitops) for e in evaluator.evaluate(asked)]
        strategy.tell(outcomes)
        told.update(keys)
    assert len(told) > 6 * 5  # the generations stayed (nearly) full of new candidates


def test_initial_population_takes_the_other_uniform_precisions_while_it_has_room() -> None:
    """Every WbAb seed always; then WwAa (w ≠ a) at the DDIM schedule up to the population size; then random."""
    space = SearchSpace(1000, (5,), SITES, (4, 8))
    encoding = Encoding(space)
    diagonal = [c.key() for c in space.seed_candidates()]  # W4A4, W8A8
    mixed = [c.key() for c in space.mixed_uniform_candidates()]  # W4A8, W8A4
    assert {c.bits_summary() for c in space.mixed_uniform_candidates()} == {"W4A8", "W8A4"}
    cases = ((1, diagonal), (3, diagonal + mixed[:1]), (4, diagonal + mixed), (6, diagonal + mixed))
    for size, expected_prefix in cases:
        population = initial_population(encoding, size, initial_rng(0), set(), lambda c: True)
        keys = [c.key() for _, c in population]
        assert keys[: len(expected_prefix)] == expected_prefix
        assert len(keys) == max(size, len(diagonal)) == len(set(keys))
        assert not set(keys[len(expected_prefix) :]) & set(diagonal + mixed)  # the rest is random
