"""The search loop on a synthetic evaluator: fronts, cache, budget, failures, checkpoints, algorithms."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from search.checkpoint import Checkpoint
from search.cost import CostModel
from search.errors import ConfigError
from search.evaluator import Evaluation
from search.evolution import EvolutionParams
from search.exhaustive import exhaustive_front
from search.pareto import ObjectiveScale, pareto_front
from search.runner import GenerationResult, RunnerConfig, SearchResult, SearchRunner
from search.space import SearchSpace, blocks_by_prefix
from search.spec import SearchSettings
from tests.search.synthetic import SyntheticEvaluator, make_cost_model

SITES = ("down.0.conv", "down.0.attn.qk", "mid.0.conv", "up.0.conv", "up.0.attn.pv", "up.1.conv")
ALGORITHMS = ("nsga2", "tmpq_evolution", "random")


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace(1000, (5, 8, 10), SITES, (4, 6, 8))


@pytest.fixture(scope="module")
def cost_model() -> CostModel:
    return make_cost_model(SITES)


def run(
    space: SearchSpace, cost_model: CostModel, evaluator: SyntheticEvaluator | None = None, **config: object
) -> tuple[SearchResult, list[GenerationResult], SyntheticEvaluator]:
    evaluator = evaluator or SyntheticEvaluator(cost_model, space.num_train_timesteps)
    reports: list[GenerationResult] = []
    runner = SearchRunner(RunnerConfig(**config), space, evaluator, cost_model)
    return runner.run(on_generation=reports.append), reports, evaluator


def front_signature(front: tuple[Evaluation, ...]) -> list[tuple[str, float, float]]:
    return [(e.key, e.quality, e.bitops) for e in front]


def igd(found: tuple[Evaluation, ...], truth: tuple[Evaluation, ...]) -> float:
    """Mean distance from each true front point to the nearest found one, in (log BitOps, quality) min-max
    normalised over the true front."""
    true = np.array([(math.log(e.bitops), e.quality) for e in truth])
    low, span = true.min(axis=0), np.ptp(true, axis=0)
    points = (np.array([(math.log(e.bitops), e.quality) for e in found]) - low) / span
    return float(np.mean([np.min(np.hypot(*(points - t).T)) for t in (true - low) / span]))


def test_nsga2_front_is_close_to_the_exhaustive_front() -> None:
    sites = ("a.0.x", "a.0.y", "b.0.x", "b.0.y")
    space = SearchSpace(
        12, (2, 3), sites, (4, 6, 8), grouping="uniform", granularity="block", site_blocks=blocks_by_prefix(sites, 1)
    )
    cost_model = make_cost_model(sites)
    truth = exhaustive_front(space, SyntheticEvaluator(cost_model, 12), cost_model)
    assert len(truth.evaluations) == space.size() == (36 + 64) * 3**4
    scale = ObjectiveScale(
        min(e.bitops for e in truth.evaluations),
        max(e.bitops for e in truth.evaluations),
        max(e.quality for e in truth.evaluations),
    )
    found = {}
    for algorithm in ("nsga2", "random"):
        result, _, _ = run(space, cost_model, algorithm=algorithm, population=24, generations=15, seed=3)
        assert result.evaluated <= 24 * 15 < space.size() / 20
        found[algorithm] = len({e.key for e in result.front} & {e.key for e in truth.front})
        if algorithm == "nsga2":
            assert scale.hypervolume(result.front) >= 0.995 * scale.hypervolume(truth.front)
            assert igd(result.front, truth.front) < 0.01
            assert found["nsga2"] >= 0.5 * len(truth.front)  # most true front points found exactly
    assert found["random"] < found["nsga2"] / 2  # and far more of them than random search finds


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_candidate_is_evaluated_twice(space: SearchSpace, cost_model: CostModel, algorithm: str) -> None:
    result, reports, evaluator = run(space, cost_model, algorithm=algorithm, population=16, generations=8, seed=0)
    assert max(evaluator.calls.values()) == 1
    assert sum(evaluator.calls.values()) == result.evaluated == sum(len(r.evaluations) for r in reports)
    keys = [e.key for r in reports for e in r.evaluations]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_budget_is_respected(space: SearchSpace, cost_model: CostModel, algorithm: str) -> None:
    result, reports, evaluator = run(
        space, cost_model, algorithm=algorithm, population=16, generations=6, seed=1, budget="W6A6@8"
    )
    budget = cost_model.uniform_cost(6, 6, 8).bitops
    assert result.front and all(e.bitops <= budget for e in result.front)
    assert all(e.bitops <= budget for r in reports for e in r.front)
    # Over-budget candidates are rejected from their analytic cost, never evaluated.
    assert all(cost_model.cost(c).bitops <= budget for c in evaluator.evaluated)
    if algorithm == "nsga2":
        assert sum(r.skipped for r in reports) > 0


@pytest.mark.parametrize("budget", [1.0, "W2A2@1"])
def test_unreachable_budget_is_a_config_error(space: SearchSpace, cost_model: CostModel, budget: object) -> None:
    evaluator = SyntheticEvaluator(cost_model, 1000)
    with pytest.raises(ConfigError) as info:
        SearchRunner(RunnerConfig(budget=budget), space, evaluator, cost_model)
    assert info.value.field == "budget"
    assert evaluator.batches == 0


def test_failures_are_recorded_and_the_search_goes_on(space: SearchSpace, cost_model: CostModel) -> None:
    seeds = [c.key() for c in space.seed_candidates()]
    evaluator = SyntheticEvaluator(cost_model, 1000, fail=seeds[:1], nan=seeds[1:2], error=seeds[2:3])
    result, reports, _ = run(space, cost_model, evaluator, algorithm="nsga2", population=16, generations=4)
    assert result.generations == 4 and result.stopped == "generations"
    assert result.failed == 3 == reports[0].failed
    first = {e.key: e for e in reports[0].evaluations}
    assert "RuntimeError: boom" in (first[seeds[0]].error or "")
    assert "not finite" in (first[seeds[1]].error or "")
    assert first[seeds[2]].error == "sampling diverged"
    assert all(first[k].bitops == cost_model.cost(space.seed_candidates()[i]).bitops for i, k in enumerate(seeds[:3]))
    assert not {e.key for e in result.front} & set(seeds[:3])
    assert result.evaluated == sum(len(r.evaluations) for r in reports) > 4 * 10


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checkpoint_resume_equals_an_uninterrupted_run(
    tmp_path: Path, space: SearchSpace, cost_model: CostModel, algorithm: str
) -> None:
    config = {"algorithm": algorithm, "population": 12, "seed": 5, "budget": "W8A8@8"}
    straight, straight_reports, _ = run(space, cost_model, **config, generations=6)

    path = tmp_path / "search.ckpt"
    first_reports: list[GenerationResult] = []
    first = SearchRunner(
        RunnerConfig(**config, generations=3),
        space,
        SyntheticEvaluator(cost_model, 1000),
        cost_model,
        checkpoint_path=path,
    )
    assert first.run(on_generation=first_reports.append).generations == 3
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # written atomically, no leftovers

    later_reports: list[GenerationResult] = []
    evaluator = SyntheticEvaluator(cost_model, 1000)
    second = SearchRunner(RunnerConfig(**config, generations=6), space, evaluator, cost_model, checkpoint_path=path)
    resumed = second.resume(path, on_generation=later_reports.append)

    assert front_signature(resumed.front) == front_signature(straight.front)
    assert resumed.hypervolumes == straight.hypervolumes
    assert resumed.evaluated == straight.evaluated
    reports = first_reports + later_reports
    assert [r.generation for r in reports] == list(range(6))
    assert [[e.key for e in r.evaluations] for r in reports] == [
        [e.key for e in r.evaluations] for r in straight_reports
    ]
    assert not set(evaluator.calls) & {e.key for r in first_reports for e in r.evaluations}


def test_resume_after_a_crash_with_known_evaluations(space: SearchSpace, cost_model: CostModel) -> None:
    config = RunnerConfig(algorithm="nsga2", population=12, generations=5, seed=2)
    straight, _, _ = run(space, cost_model, algorithm="nsga2", population=12, generations=5, seed=2)

    stored: dict[str, tuple] = {}
    snapshots: list[Checkpoint] = []

    def store_then_crash(result: GenerationResult) -> None:
        for e in result.evaluations:  # the driver stores the generation before anything else
            stored[e.key] = (result.candidates[e.key], e)
        if result.generation == 2:
            raise KeyboardInterrupt  # dies after storing generation 2, before its checkpoint
        snapshots.append(runner.checkpoint())

    runner = SearchRunner(config, space, SyntheticEvaluator(cost_model, 1000), cost_model)
    with pytest.raises(KeyboardInterrupt):
        runner.run(on_generation=store_then_crash)
    assert snapshots[-1].generation == 2

    evaluator = SyntheticEvaluator(cost_model, 1000)
    replayed: list[GenerationResult] = []
    resumed = SearchRunner(config, space, evaluator, cost_model).resume(
        snapshots[-1], on_generation=replayed.append, known=stored.values()
    )
    assert not set(evaluator.calls) & set(stored)  # generation 2 is replayed from the known evaluations
    assert replayed[0].generation == 2 and {e.key for e in replayed[0].evaluations} <= set(stored)
    assert front_signature(resumed.front) == front_signature(straight.front)


def test_resume_refuses_other_settings(space: SearchSpace, cost_model: CostModel) -> None:
    runner = SearchRunner(
        RunnerConfig(population=8, generations=1, seed=1), space, SyntheticEvaluator(cost_model, 1000), cost_model
    )
    runner.run()
    other = SearchRunner(
        RunnerConfig(population=8, generations=2, seed=2), space, SyntheticEvaluator(cost_model, 1000), cost_model
    )
    with pytest.raises(ConfigError) as info:
        other.resume(runner.checkpoint())
    assert info.value.field == "checkpoint" and "seed" in info.value.reason


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_evaluation_cap_is_exact(space: SearchSpace, cost_model: CostModel, algorithm: str) -> None:
    result, reports, evaluator = run(
        space, cost_model, algorithm=algorithm, population=20, generations=50, seed=4, max_evaluations=45
    )
    assert result.evaluated == 45 == sum(evaluator.calls.values())
    assert result.stopped == "max_evaluations" and len(reports) == 3
    assert [r.evaluated for r in reports] == [20, 40, 45]


def test_progress_reports(space: SearchSpace, cost_model: CostModel) -> None:
    result, reports, _ = run(space, cost_model, algorithm="nsga2", population=16, generations=6, seed=6)
    hv = [r.hypervolume for r in reports]
    assert hv == list(result.hypervolumes) and all(b >= a for a, b in itertools.pairwise(hv))
    assert 0 < hv[0] < hv[-1] <= 1.21
    for r in reports:
        assert {e.key for e in r.evaluations} | {e.key for e in r.front} <= set(r.candidates)
        assert [e.bitops for e in r.front] == sorted(e.bitops for e in r.front)
    assert [r.evaluated for r in reports] == sorted(r.evaluated for r in reports)
    assert result.knee() in result.front


def test_initial_population_is_the_ddim_seeds_then_random(space: SearchSpace, cost_model: CostModel) -> None:
    seeds = {c.key() for c in space.seed_candidates()}
    assert len(seeds) == 9  # 3 step counts x 3 uniform precisions
    firsts = []
    for algorithm in ALGORITHMS:
        # An explicit budget all seeds meet (tmpq_evolution would default to W6A6 at the largest K).
        _, reports, _ = run(
            space, cost_model, algorithm=algorithm, population=12, generations=1, seed=0, budget="W8A8@10"
        )
        firsts.append({e.key for e in reports[0].evaluations})
        assert seeds < firsts[-1] and len(firsts[-1]) == 12
    assert firsts[0] == firsts[1] == firsts[2]  # every algorithm starts from the same population
    _, reports, _ = run(space, cost_model, algorithm="nsga2", population=4, generations=1, seed=0)
    assert {e.key for e in reports[0].evaluations} == seeds  # never fewer than the seeds


def test_tmpq_evolution_beats_random_at_equal_evaluations(space: SearchSpace, cost_model: CostModel) -> None:
    budget = "W6A6@10"
    best = {}
    for algorithm in ("tmpq_evolution", "random"):
        result, _, _ = run(
            space,
            cost_model,
            algorithm=algorithm,
            population=20,
            generations=8,
            seed=0,
            budget=budget,
            evolution=EvolutionParams(mutation_prob=0.25),
        )
        assert result.evaluated == 160
        best[algorithm] = min(e.quality for e in result.front)
    assert best["tmpq_evolution"] < best["random"]


def test_runner_accepts_a_spec_with_k_set_and_blocks(cost_model: CostModel) -> None:
    spec = SearchSettings.from_dict(
        {
            "steps": [5, 10],
            "bit_options": [4, 8],
            "granularity": "block",
            "population": 10,
            "generations": 2,
            "budget": "W6A6@10",
        }
    )
    space = SearchSpace.from_spec(spec, SITES, 1000, blocks_by_prefix(SITES, 2))
    evaluator = SyntheticEvaluator(cost_model, 1000)
    result = SearchRunner(spec, space, evaluator, cost_model).run()
    assert result.generations == 2 and result.front
    assert {c.steps for c in result.candidates.values()} <= {5, 10}
    assert math.isfinite(result.hypervolumes[-1])


def test_request_stop_then_resume(space: SearchSpace, cost_model: CostModel) -> None:
    config = RunnerConfig(algorithm="random", population=8, generations=4, seed=9)
    straight, _, _ = run(space, cost_model, algorithm="random", population=8, generations=4, seed=9)
    runner = SearchRunner(config, space, SyntheticEvaluator(cost_model, 1000), cost_model)

    def stop_at_one(result: GenerationResult) -> None:
        if result.generation == 1:
            runner.request_stop()

    stopped = runner.run(on_generation=stop_at_one)
    assert (stopped.stopped, stopped.generations) == ("requested", 2)
    snapshot = runner.checkpoint()
    resumed = SearchRunner(config, space, SyntheticEvaluator(cost_model, 1000), cost_model).resume(snapshot)
    assert snapshot.generation == 2  # resuming copies the checkpoint instead of changing it
    assert resumed.stopped == "generations"
    assert front_signature(resumed.front) == front_signature(straight.front)


def test_resume_refuses_another_cost_model(space: SearchSpace, cost_model: CostModel) -> None:
    runner = SearchRunner(
        RunnerConfig(population=8, generations=1), space, SyntheticEvaluator(cost_model, 1000), cost_model
    )
    runner.run()
    other_model = CostModel({s: 7 for s in SITES}, {s: 1 for s in SITES})
    other = SearchRunner(
        RunnerConfig(population=8, generations=2), space, SyntheticEvaluator(other_model, 1000), other_model
    )
    with pytest.raises(ConfigError, match="cost_model"):
        other.resume(runner.checkpoint())


def _latency_model(cost_model: CostModel) -> CostModel:
    from search.latency import LatencyTable

    table = LatencyTable(
        backend="cpu-int8",
        batch_size=8,
        machine="test",
        base_ms=10.0,
        site_ms={
            "down.0.conv": {"fp": 5.0, "int8": 1.0, "int8-offset": 3.0},  # 8-bit weights cost more than 6-bit
            "mid.0.conv": {"fp": 4.0, "int8": 2.0},
            "up.1.conv": {"fp": 4.0, "int8": 1.5},
        },
        offset_sites=frozenset({"down.0.conv"}),
    )
    return cost_model.with_latency(table)


def test_latency_search_ranks_by_the_tables_milliseconds(space: SearchSpace, cost_model: CostModel) -> None:
    priced = _latency_model(cost_model)
    evaluator = SyntheticEvaluator(cost_model, 1000)  # reports no latency: the runner prices it
    result, gens, _ = run(space, priced, evaluator, cost="latency", population=12, generations=4, seed=3)
    evaluated = {e.key: e for g in gens for e in g.evaluations}
    by_key = {c.key(): c for c in evaluator.evaluated}
    for key, e in evaluated.items():
        assert e.latency_ms == pytest.approx(priced.latency.latency_ms(by_key[key]))
    assert [e.key for e in result.front] == [e.key for e in pareto_front(evaluated.values(), axis="latency")]
    latencies = [e.latency_ms for e in result.front]
    assert latencies == sorted(latencies) and result.axis == "latency"
    assert result.knee() is not None and gens[-1].hypervolume > 0


def test_latency_search_needs_a_table_and_resumes_only_as_one(space: SearchSpace, cost_model: CostModel) -> None:
    evaluator = SyntheticEvaluator(cost_model, 1000)
    with pytest.raises(ConfigError, match="latency table") as info:
        SearchRunner(RunnerConfig(cost="latency"), space, evaluator, cost_model)
    assert info.value.field == "cost"
    with pytest.raises(ConfigError, match="cost"):
        RunnerConfig(cost="watts")
    priced = _latency_model(cost_model)
    first = SearchRunner(RunnerConfig(cost="latency", population=6, generations=1), space, evaluator, priced)
    first.run()
    bitops = SearchRunner(RunnerConfig(population=6, generations=2), space, evaluator, priced)
    with pytest.raises(ConfigError, match="cost"):
        bitops.resume(first.checkpoint())
