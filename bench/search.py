"""Benchmark of the joint search on the shipped testbed: NSGA-II vs TMPQ-DM's evolution vs random search.

Three parts, all with the real in-process evaluator (the FP-reference MSE from fixed noise, ``--samples``
images, DDIM reference at ``--reference-steps``). Every candidate is evaluated at most once in the whole run:
the evaluator is wrapped in a table that every search shares (a candidate's quality depends on the candidate
only, since all are sampled from the same noise), while each search still counts its own evaluations.

1. **Enumerable space.** Three precision units (the UNet's down path with ``conv_in`` and the time embedding,
   the mid block, the up path with ``conv_out``), a weight and an activation gene each over ``--enum-bits``,
   times a menu of a few K-step schedules (the DDIM schedule moved into TMPQ-DM's non-uniform groups, each
   group's last, middle and first timestep, and seeded random members of the groups). Every candidate is
   evaluated once; the searches then replay the stored values, so many search seeds are cheap.
   ``hv_ratio_<algorithm>`` = hypervolume of the search's front after ⌊10 % of the space⌋ evaluations / that
   of the exhaustive front (target for NSGA-II: ≥ 0.97), mean over ``--enum-seeds`` seeds, per seed beside.
   The population is sized to the evaluation budget (about an eighth of it, at least 4: with 32 evaluations,
   4, so NSGA-II runs 8 generations); ``hv_ratio_by_population`` gives the figures at 8 and 16 too.
   Hypervolume scale: BitOps on a log scale between the space's cheapest and dearest candidate, quality
   divided by the worst quality on the exhaustive front (reference point 1.1 × that nadir). TMPQ-DM's
   evolution searches under its hard budget (uniform W6A6 at the same K): its ratio against the whole front is
   capped by construction, so its ratio against the exhaustive front within that budget and the regret of its
   best point (best quality found / best quality in the space, both within the budget) are reported too.
2. **Full testbed space** (the demo's: per-block genes over {4, 6, 8}, K in {5, 10}, non-uniform groups),
   each algorithm with the same number of evaluations: hypervolumes on one scale (quality reference = nadir of
   the union of the three fronts), and whether NSGA-II's front dominates the evolution's best point (the best
   quality within its budget, W6A6@10).
3. **TMPQ-DM's two claims**, NSGA-II at K=10 under the W6A6@10 budget with the same number of evaluations:
   non-uniform vs uniform timestep grouping; and the joint search vs a sequential one (first the schedule with
   FP weights, then the bits with that schedule fixed; half the evaluations each). Compared by the best
   quality within the budget and the hypervolume of the fronts within it (one scale for all of part 3).

Part 2 and 3 run three search seeds each (``--seeds``): their figures carry the seed-to-seed spread that part 1
shows. Every part sizes its population to its evaluation budget (:func:`population_for`: an eighth of it, at
least 4), so each search runs about 8 generations. Prints progress to stderr and one JSON object as the last
stdout line. ``--quick`` (under a minute once the supernet is cached) shrinks everything to a smoke test; its
figures mean nothing.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts bench/ first on sys.path, where this file's name shadows the `search` package.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import json
import logging
import math
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.candidate import Candidate
from search.compare import best_within, dominating, hypervolume_ratio, nadir_scale, summary
from search.cost import CostModel
from search.evaluator import Evaluation, Evaluator
from search.exhaustive import exhaustive_front
from search.pareto import pareto_front
from search.replay import ScheduleMenu, TableEvaluator
from search.runner import RunnerConfig, SearchResult, SearchRunner, resolve_budget
from search.space import SearchSpace, baseline_schedule, timestep_groups
from search.spec import SearchSettings, UniformBudget
from supernet.calibration.settings import CalibrationSettings
from supernet.model_settings import ModelSettings
from supernet.zoo.testbed import TESTBED_DIR
from workers.driver import DriverOptions, PreparedJob, evaluator_config, make_evaluator, prepare_job
from workers.evaluation_settings import EvaluationSettings
from workers.jobspec import JobSpec

ALGORITHMS = ("nsga2", "tmpq_evolution", "random")
#: A generation cap no part reaches: every search stops at its evaluation budget.
UNBOUNDED_GENERATIONS = 10_000


def _log(msg: str) -> None:
    print(f"[bench/search] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``--quick`` or full); recorded in the JSON."""

    samples: int
    reference_steps: int
    enum_steps: int
    enum_schedules: int
    enum_bits: tuple[int, ...]
    enum_fraction: float
    enum_population: int
    enum_population_sweep: tuple[int, ...]
    enum_seeds: int
    full_steps: tuple[int, ...]
    full_bits: tuple[int, ...]
    full_population: int
    full_evaluations: int
    claim_steps: int
    claim_population: int
    claim_evaluations: int
    budget_bits: int
    seeds: int


def population_for(evaluations: int) -> int:
    """The population for an evaluation budget: about an eighth of it (8 generations), at least 4."""
    return max(4, evaluations // 8)


QUICK = Settings(
    samples=8,
    reference_steps=20,
    enum_steps=3,
    enum_schedules=2,
    enum_bits=(4, 8),
    enum_fraction=0.1,
    enum_population=4,
    enum_population_sweep=(4,),
    enum_seeds=5,
    full_steps=(5, 10),
    full_bits=(4, 6, 8),
    full_population=6,
    full_evaluations=12,
    claim_steps=5,
    claim_population=4,
    claim_evaluations=8,
    budget_bits=6,
    seeds=1,
)
FULL = Settings(
    samples=64,
    reference_steps=100,
    enum_steps=5,
    enum_schedules=5,
    enum_bits=(4, 8),
    enum_fraction=0.1,
    # 10 % of the 320-candidate space is 32 evaluations: population 4, so NSGA-II runs 8 generations; the
    # sweep reports 8 and 16 beside it. Every part sizes its population with population_for.
    enum_population=population_for(32),
    enum_population_sweep=(4, 8, 16),
    enum_seeds=100,
    full_steps=(5, 10),
    full_bits=(4, 6, 8),
    full_population=population_for(80),
    full_evaluations=80,
    claim_steps=10,
    claim_population=population_for(64),
    claim_evaluations=64,
    budget_bits=6,
    seeds=3,
)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------


class CountingEvaluator:
    """Wraps the real evaluator: counts the candidates it measures and the seconds spent, logs progress."""

    def __init__(self, inner: Evaluator, every: int = 25) -> None:
        self.inner = inner
        self.every = every
        self.count = 0
        self.seconds = 0.0

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        start = time.perf_counter()
        out = self.inner.evaluate(candidates)
        self.seconds += time.perf_counter() - start
        before, self.count = self.count, self.count + len(candidates)
        if before // self.every != self.count // self.every:
            _log(f"{self.count} real evaluations, {self.seconds:.0f} s of evaluation")
        return out


@dataclass
class Bench:
    """The testbed job, its real evaluator behind a shared table, and the run's settings."""

    job: PreparedJob
    settings: Settings
    real: CountingEvaluator
    table: TableEvaluator

    @property
    def cost_model(self) -> CostModel:
        return self.job.cost_model

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.job.supernet.sites)

    @property
    def site_blocks(self) -> dict[str, str]:
        return dict(self.job.supernet.site_blocks)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.job.model.num_train_timesteps)


@dataclass(frozen=True)
class Run:
    """One finished search: every evaluation it asked for, its result and its budget in BitOps."""

    evaluations: tuple[Evaluation, ...]
    candidates: dict[str, Candidate]
    result: SearchResult
    budget: float | None

    @property
    def front(self) -> list[Evaluation]:
        """The feasible front of all its evaluations (within its budget)."""
        return pareto_front(self.evaluations, self.budget)


def run_search(
    space: SearchSpace,
    evaluator: Evaluator,
    cost_model: CostModel,
    algorithm: str,
    population: int,
    seed: int,
    max_evaluations: int,
    budget: float | UniformBudget | None = None,
) -> Run:
    """One search, stopped by its evaluation budget."""
    config = RunnerConfig(
        algorithm=algorithm,
        population=population,
        generations=UNBOUNDED_GENERATIONS,
        seed=seed,
        budget=budget,
        max_evaluations=max_evaluations,
    )
    runner = SearchRunner(config, space, evaluator, cost_model)
    result = runner.run()
    entries = list(runner.cache.claimed())
    return Run(
        tuple(e.evaluation for e in entries), {e.candidate.key(): e.candidate for e in entries}, result, runner.budget
    )


def point(e: Evaluation | None, candidate: Candidate | None = None, bitops_unit: float = 1e9) -> dict[str, Any] | None:
    """A compact JSON form of one evaluation (GBitOps by default)."""
    if e is None:
        return None
    out: dict[str, Any] = {"quality": _r(e.quality), "gbitops": _r(e.bitops / bitops_unit), "ok": e.ok}
    if "psnr" in e.extra:
        out["psnr_db"] = _r(e.extra["psnr"])
    if candidate is not None:
        out["timesteps"] = list(candidate.timesteps)
        out["bits"] = candidate.bits_summary()
    return out


def _r(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def super_blocks(site_blocks: Mapping[str, str]) -> dict[str, str]:
    """``{site: down|mid|up}``: the UNet's down path (with conv_in and the time embedding), mid block, up path."""
    out = {}
    for site, block in site_blocks.items():
        if block.startswith("mid"):
            out[site] = "mid"
        elif block.startswith(("up_blocks", "conv_out", "conv_norm_out")):
            out[site] = "up"
        else:
            out[site] = "down"
    return out


def schedule_menu(num_train_timesteps: int, steps: int, count: int, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` distinct K-step schedules of the non-uniform space, the DDIM baseline first.

    Then each group's last, middle and first timestep, then seeded uniform draws inside the groups.
    """
    groups = timestep_groups(num_train_timesteps, steps, "nonuniform")[::-1]
    menu = [baseline_schedule(steps, num_train_timesteps, "nonuniform")]
    for pick in (lambda g: g.stop - 1, lambda g: g.start + len(g) // 2, lambda g: g.start):
        menu.append(tuple(pick(g) for g in groups))
    rng = np.random.default_rng(seed)
    while len(set(menu)) < count:
        menu.append(tuple(int(rng.integers(g.start, g.stop)) for g in groups))
    return list(dict.fromkeys(menu))[:count]


# ---------------------------------------------------------------------------------------------------------
# Part 1: the enumerable space
# ---------------------------------------------------------------------------------------------------------


def bench_enumerable(b: Bench) -> dict[str, Any]:
    """Exhaustive front of a small space, then every algorithm replayed over many seeds at 10 % of it."""
    s = b.settings
    schedules = schedule_menu(b.num_train_timesteps, s.enum_steps, s.enum_schedules)
    menu = ScheduleMenu(schedules, b.sites, s.enum_bits, super_blocks(b.site_blocks))
    cost = ScheduleMenu.cost_model(b.cost_model)  # BitOps per forward: the real BitOps / K
    size = menu.size()
    _log(
        f"part 1: {size} candidates ({len(schedules)} schedules x {len(menu.space.units)} units "
        f"x bits {list(s.enum_bits)}), evaluating all"
    )
    start = time.perf_counter()
    exhaustive = exhaustive_front(menu.space, menu.evaluator(b.table), cost, batch_size=32)
    exhaustive_s = time.perf_counter() - start
    failed = sum(1 for e in exhaustive.evaluations if not e.ok)
    low, high = cost.cost(menu.space.cheapest()).bitops, cost.cost(menu.space.dearest()).bitops
    scale = nadir_scale(exhaustive.front, low, high)
    evo_budget = resolve_budget(None, cost, menu.space, "tmpq_evolution")
    best_in_budget = best_within(exhaustive.evaluations, evo_budget)
    max_evaluations = max(1, math.floor(s.enum_fraction * size))
    _log(
        f"part 1: exhaustive front of {len(exhaustive.front)} points in {exhaustive_s:.0f} s; "
        f"replaying searches of {max_evaluations} evaluations"
    )

    replay = {e.key: e for e in exhaustive.evaluations}
    per_algorithm: dict[str, dict[str, list[float]]] = {}
    for algorithm in ALGORITHMS:
        figures: dict[str, list[float]] = {
            "hv_ratio": [],
            "hv_ratio_within_budget": [],
            "best_regret": [],
            "evaluations": [],
            "front_size": [],
        }
        for seed in range(s.enum_seeds):
            run = run_search(
                menu.space, TableEvaluator(replay), cost, algorithm, s.enum_population, seed, max_evaluations
            )
            best = best_within(run.evaluations, evo_budget)
            figures["hv_ratio"].append(hypervolume_ratio(run.front, exhaustive.front, scale))
            figures["hv_ratio_within_budget"].append(
                hypervolume_ratio(
                    pareto_front(run.evaluations, evo_budget), pareto_front(exhaustive.evaluations, evo_budget), scale
                )
            )
            figures["best_regret"].append(
                best.quality / best_in_budget.quality if best and best_in_budget else math.inf
            )
            figures["evaluations"].append(len(run.evaluations))
            figures["front_size"].append(len(run.front))
        per_algorithm[algorithm] = figures
        _log(
            f"part 1: {algorithm}: HV ratio mean {np.mean(figures['hv_ratio']):.4f} "
            f"(min {min(figures['hv_ratio']):.4f}) over {s.enum_seeds} seeds"
        )

    sweep: dict[str, dict[str, Any]] = {}
    for population in sorted(set(s.enum_population_sweep) - {s.enum_population}):
        sweep[str(population)] = {}
        for algorithm in ALGORITHMS:
            ratios = [
                hypervolume_ratio(
                    run_search(
                        menu.space, TableEvaluator(replay), cost, algorithm, population, seed, max_evaluations
                    ).front,
                    exhaustive.front,
                    scale,
                )
                for seed in range(s.enum_seeds)
            ]
            sweep[str(population)][algorithm] = {k: _r(v) for k, v in summary(ratios).items()}
    sweep[str(s.enum_population)] = {
        a: {k: _r(v) for k, v in summary(per_algorithm[a]["hv_ratio"]).items()} for a in ALGORITHMS
    }
    if len(sweep) > 1:
        _log("part 1: population sweep " + ", ".join(f"{p}: {v['nsga2']['mean']}" for p, v in sweep.items()))

    def stats(algorithm: str, name: str) -> dict[str, Any]:
        values = per_algorithm[algorithm][name]
        return {**{k: _r(v) for k, v in summary(values).items()}, "per_seed": [_r(v) for v in values]}

    k = s.enum_steps
    front_points = []
    for e in exhaustive.front:
        c = exhaustive.candidates[e.key]
        p = point(replace_bitops(e, e.bitops * k), menu.to_real(c))
        w, a = c.w_map(), c.a_map()
        first = {u: menu.space.unit_sites(u)[0] for u in menu.space.units}
        p["units"] = {u: f"W{w[site]}A{a[site]}" for u, site in first.items()}
        p["schedule_index"] = c.timesteps[0]
        front_points.append(p)
    return {
        "hv_ratio_nsga2": _r(float(np.mean(per_algorithm["nsga2"]["hv_ratio"]))),
        "hv_ratio_evolution": _r(float(np.mean(per_algorithm["tmpq_evolution"]["hv_ratio"]))),
        "hv_ratio_random": _r(float(np.mean(per_algorithm["random"]["hv_ratio"]))),
        "hv_ratio_nsga2_target": 0.97,
        "hv_ratio_nsga2_target_met": bool(np.mean(per_algorithm["nsga2"]["hv_ratio"]) >= 0.97),
        "detail": {
            "space": {
                "candidates": size,
                "schedules": [list(t) for t in schedules],
                "steps": k,
                "units": {u: len(menu.space.unit_sites(u)) for u in menu.space.units},
                "bit_options": list(s.enum_bits),
                "grouping": "nonuniform",
            },
            "exhaustive": {
                "evaluated": len(exhaustive.evaluations),
                "failed": failed,
                "seconds": round(exhaustive_s, 1),
                "front_size": len(exhaustive.front),
                "front": front_points,
                "hypervolume": _r(scale.hypervolume(exhaustive.front)),
                "scale_quality_ref": _r(scale.quality_ref),
                "best_within_evolution_budget": point(replace_bitops(best_in_budget, best_in_budget.bitops * k))
                if best_in_budget
                else None,
            },
            "max_evaluations": max_evaluations,
            "fraction_of_space": _r(max_evaluations / size),
            "population": s.enum_population,
            "hv_ratio_by_population": {p: sweep[p] for p in sorted(sweep, key=int)},
            "search_seeds": s.enum_seeds,
            "evolution_budget": f"W{s.budget_bits}A{s.budget_bits}@{k} (TMPQ-DM default)",
            "evolution_budget_gbitops": _r(evo_budget * k / 1e9) if evo_budget else None,
            **{
                algorithm: {name: stats(algorithm, name) for name in per_algorithm[algorithm]}
                for algorithm in ALGORITHMS
            },
        },
    }


def replace_bitops(e: Evaluation, bitops: float) -> Evaluation:
    """``e`` with other BitOps (menu prices are per forward; reports show the whole schedule's)."""
    return Evaluation(e.key, e.quality, bitops, e.weight_bytes, dict(e.extra), e.error)


# ---------------------------------------------------------------------------------------------------------
# Part 2: the full testbed space
# ---------------------------------------------------------------------------------------------------------


def bench_full(b: Bench, seed: int) -> dict[str, Any]:
    """NSGA-II, TMPQ-DM's evolution and random search on the demo's space at equal evaluations."""
    s = b.settings
    space = SearchSpace(b.num_train_timesteps, s.full_steps, b.sites, s.full_bits, "nonuniform", "block", b.site_blocks)
    cost = b.cost_model
    budget = UniformBudget(s.budget_bits, s.budget_bits, max(s.full_steps))
    runs: dict[str, Run] = {}
    for algorithm in ALGORITHMS:
        before = b.real.count
        start = time.perf_counter()
        runs[algorithm] = run_search(
            space,
            b.table,
            cost,
            algorithm,
            s.full_population,
            seed,
            s.full_evaluations,
            budget if algorithm == "tmpq_evolution" else None,
        )
        _log(
            f"part 2 (seed {seed}): {algorithm}: {len(runs[algorithm].evaluations)} evaluations "
            f"({b.real.count - before} new to the run) in {time.perf_counter() - start:.0f} s"
        )
    fronts = {a: r.front for a, r in runs.items()}
    union = pareto_front([e for f in fronts.values() for e in f])
    scale = nadir_scale(union, cost.cost(space.cheapest()).bitops, cost.cost(space.dearest()).bitops)
    hv = {a: scale.hypervolume(f) for a, f in fronts.items()}
    evo_budget = runs["tmpq_evolution"].budget
    hv_budget = {a: scale.hypervolume(pareto_front(f, evo_budget)) for a, f in fronts.items()}
    evo_best = best_within(fronts["tmpq_evolution"], evo_budget)
    nsga_best = best_within(fronts["nsga2"], evo_budget)
    dominators = dominating(fronts["nsga2"], evo_best) if evo_best else []
    candidates = {k: c for r in runs.values() for k, c in r.candidates.items()}
    baselines = {
        f"W{c.w_map()[c.sites[0]]}A{c.a_map()[c.sites[0]]}@{c.steps}": b.table.table.get(c.key())
        for c in space.seed_candidates()
    }
    return {
        "hypervolume": {a: _r(v) for a, v in hv.items()},
        "hv_nsga2_over_evolution": _r(hv["nsga2"] / hv["tmpq_evolution"]) if hv["tmpq_evolution"] else None,
        "hv_nsga2_over_random": _r(hv["nsga2"] / hv["random"]) if hv["random"] else None,
        "hypervolume_within_evolution_budget": {a: _r(v) for a, v in hv_budget.items()},
        "nsga2_dominates_evolution_best": bool(dominators),
        "evolution_best": point(evo_best, candidates.get(evo_best.key) if evo_best else None),
        "nsga2_best_within_evolution_budget": point(nsga_best, candidates.get(nsga_best.key) if nsga_best else None),
        "nsga2_points_dominating_evolution_best": len(dominators),
        "evaluations": {a: len(r.evaluations) for a, r in runs.items()},
        "stopped": {a: r.result.stopped for a, r in runs.items()},
        "front_sizes": {a: len(f) for a, f in fronts.items()},
        "fronts": {a: [point(e, candidates.get(e.key)) for e in f] for a, f in fronts.items()},
        "uniform_baselines": {name: point(e) for name, e in baselines.items()},
        "scale_quality_ref": _r(scale.quality_ref),
        "evolution_budget": str(budget),
        "evolution_budget_gbitops": _r(evo_budget / 1e9) if evo_budget else None,
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------------------
# Part 3: TMPQ-DM's claims
# ---------------------------------------------------------------------------------------------------------


def bench_claims(b: Bench, seed: int) -> dict[str, Any]:
    """Non-uniform vs uniform grouping, and joint vs sequential search, at equal K, budget and evaluations."""
    s = b.settings
    k, cost = s.claim_steps, b.cost_model
    budget = UniformBudget(s.budget_bits, s.budget_bits, k)
    budget_bitops = cost.uniform_cost(budget.w_bits, budget.a_bits, k).bitops
    n = s.claim_evaluations
    fronts: dict[str, list[Evaluation]] = {}
    candidates: dict[str, Candidate] = {}
    evaluated: dict[str, int] = {}

    def space(grouping: str, bits: Sequence[int]) -> SearchSpace:
        return SearchSpace(b.num_train_timesteps, (k,), b.sites, tuple(bits), grouping, "block", b.site_blocks)

    for grouping in ("nonuniform", "uniform"):
        run = run_search(space(grouping, s.full_bits), b.table, cost, "nsga2", s.claim_population, seed, n, budget)
        fronts[grouping] = run.front
        candidates.update(run.candidates)
        evaluated[grouping] = len(run.evaluations)
        _log(f"part 3 (seed {seed}): {grouping} grouping: {len(run.evaluations)} evaluations")

    # Sequential: the schedule with FP weights (every site at 16 bits), then the bits with that schedule fixed.
    phase1 = run_search(space("nonuniform", (16,)), b.table, cost, "nsga2", s.claim_population, seed, n // 2)
    fp_best = best_within(phase1.evaluations)
    if fp_best is None:
        raise RuntimeError("the FP schedule search produced no successful evaluation")
    schedule = phase1.candidates[fp_best.key].timesteps
    menu = ScheduleMenu([schedule], b.sites, s.full_bits, b.site_blocks)
    menu_budget = UniformBudget(budget.w_bits, budget.a_bits, 1)  # per forward, as the menu prices
    phase2 = run_search(
        menu.space,
        menu.evaluator(b.table),
        ScheduleMenu.cost_model(cost),
        "nsga2",
        s.claim_population,
        seed,
        n - len(phase1.evaluations),
        menu_budget,
    )
    sequential = []
    for e in phase2.evaluations:
        real = menu.to_real(phase2.candidates[e.key])
        sequential.append(Evaluation(real.key(), e.quality, cost.cost(real).bitops, e.weight_bytes, e.extra, e.error))
        candidates[real.key()] = real
    fronts["sequential"] = pareto_front(sequential, budget_bitops)
    evaluated["sequential"] = len(phase1.evaluations) + len(phase2.evaluations)
    _log(f"part 3 (seed {seed}): sequential: {len(phase1.evaluations)} + {len(phase2.evaluations)} evaluations")

    k_space = space("nonuniform", s.full_bits)
    union = pareto_front([e for f in fronts.values() for e in f])
    scale = nadir_scale(union, cost.cost(k_space.cheapest()).bitops, cost.cost(k_space.dearest()).bitops)
    hv = {name: scale.hypervolume(f) for name, f in fronts.items()}
    best = {name: best_within(f, budget_bitops) for name, f in fronts.items()}

    def quality_ratio(a: str, c: str) -> float | None:
        return _r(best[a].quality / best[c].quality) if best[a] and best[c] else None

    ddim = {
        g: b.table.table.get(space(g, s.full_bits).uniform_candidate(k, s.budget_bits, s.budget_bits).key())
        for g in ("nonuniform", "uniform")
    }
    return {
        "nonuniform_vs_uniform": {
            "hypervolume": {"nonuniform": _r(hv["nonuniform"]), "uniform": _r(hv["uniform"])},
            "best_within_budget": {
                "nonuniform": point(best["nonuniform"], _get(candidates, best["nonuniform"])),
                "uniform": point(best["uniform"], _get(candidates, best["uniform"])),
            },
            "best_quality_ratio_nonuniform_over_uniform": quality_ratio("nonuniform", "uniform"),
            "nonuniform_better": _better(best["nonuniform"], best["uniform"], hv["nonuniform"], hv["uniform"]),
            f"uniform_W{s.budget_bits}A{s.budget_bits}_ddim_baseline": {g: point(e) for g, e in ddim.items()},
            "evaluations": {g: evaluated[g] for g in ("nonuniform", "uniform")},
        },
        "joint_vs_sequential": {
            "hypervolume": {"joint": _r(hv["nonuniform"]), "sequential": _r(hv["sequential"])},
            "best_within_budget": {
                "joint": point(best["nonuniform"], _get(candidates, best["nonuniform"])),
                "sequential": point(best["sequential"], _get(candidates, best["sequential"])),
            },
            "best_quality_ratio_joint_over_sequential": quality_ratio("nonuniform", "sequential"),
            "joint_better": _better(best["nonuniform"], best["sequential"], hv["nonuniform"], hv["sequential"]),
            "fp_schedule_found": list(schedule),
            "fp_schedule_quality": _r(fp_best.quality),
            "evaluations": {
                "joint": evaluated["nonuniform"],
                "sequential": evaluated["sequential"],
                "sequential_phase1_fp": len(phase1.evaluations),
                "sequential_phase2_bits": len(phase2.evaluations),
            },
        },
        "front_sizes": {name: len(f) for name, f in fronts.items()},
        "scale_quality_ref": _r(scale.quality_ref),
        "steps": k,
        "budget": str(budget),
        "budget_gbitops": _r(budget_bitops / 1e9),
        "algorithm": "nsga2",
        "seed": seed,
    }


def _get(candidates: Mapping[str, Candidate], e: Evaluation | None) -> Candidate | None:
    return candidates.get(e.key) if e is not None else None


def _better(a: Evaluation | None, c: Evaluation | None, hv_a: float, hv_c: float) -> dict[str, bool | None]:
    """Whether ``a`` wins on best quality within the budget and on hypervolume."""
    return {"best_quality": (a.quality < c.quality) if a and c else None, "hypervolume": hv_a > hv_c}


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke test (under a minute once the supernet is cached)")
    p.add_argument("--model", type=Path, default=TESTBED_DIR)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--samples", type=int, default=None, help="MSE samples per candidate (default 64; quick 8)")
    p.add_argument("--enum-seeds", type=int, default=None, help="search seeds replayed in part 1 (default 100)")
    p.add_argument("--seeds", type=int, default=None, help="search seeds of parts 2 and 3 (default 1)")
    p.add_argument("--parts", default="1,2,3", help="comma-separated parts to run (default 1,2,3)")
    p.add_argument(
        "--calibration-strategy",
        default="range",
        help="supernet calibration strategy (default range: this measures the search, not calibration)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    base = QUICK if args.quick else FULL
    overrides = {
        name: value
        for name, value in (("samples", args.samples), ("enum_seeds", args.enum_seeds), ("seeds", args.seeds))
        if value is not None
    }
    settings = Settings(**{**asdict(base), **overrides})
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    wall = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)

    spec = JobSpec(
        model=ModelSettings(path=str(args.model)),
        search=SearchSettings(bit_options=settings.full_bits, steps=settings.full_steps, granularity="block"),
        calibration=CalibrationSettings(strategy=args.calibration_strategy),
        evaluation=EvaluationSettings(
            samples=settings.samples, reference_steps=settings.reference_steps, rescore_samples=0
        ),
    )
    start = time.perf_counter()
    job = prepare_job(spec, DriverOptions())
    prepare_s = time.perf_counter() - start
    _log(f"model and supernet ready in {prepare_s:.1f} s ({job.supernet_path})")
    real = CountingEvaluator(make_evaluator(job, evaluator_config(job, threads=args.threads), "inprocess"))
    b = Bench(job, settings, real, TableEvaluator(fallback=real))

    result: dict[str, Any] = {"bench": "search", "quick": args.quick}
    timings: dict[str, float] = {"prepare_s": round(prepare_s, 1)}
    if 1 in parts:
        start = time.perf_counter()
        enumerable = bench_enumerable(b)
        timings["part1_s"] = round(time.perf_counter() - start, 1)
        detail = enumerable.pop("detail")
        result.update(enumerable)
        result["enumerable"] = detail
    if 2 in parts:
        start = time.perf_counter()
        runs = [bench_full(b, seed) for seed in range(settings.seeds)]
        timings["part2_s"] = round(time.perf_counter() - start, 1)
        result["nsga2_dominates_evolution_best"] = (
            [r["nsga2_dominates_evolution_best"] for r in runs]
            if len(runs) > 1
            else runs[0]["nsga2_dominates_evolution_best"]
        )
        result["full_space"] = runs if len(runs) > 1 else runs[0]
        result["full_space_summary"] = {
            f"hypervolume_{a}": {k: _r(v) for k, v in summary([r["hypervolume"][a] for r in runs]).items()}
            for a in ALGORITHMS
        }
    if 3 in parts:
        start = time.perf_counter()
        claims = [bench_claims(b, seed) for seed in range(settings.seeds)]
        timings["part3_s"] = round(time.perf_counter() - start, 1)
        result["claims"] = claims if len(claims) > 1 else claims[0]
        result["claims_summary"] = {
            "nonuniform_better": [c["nonuniform_vs_uniform"]["nonuniform_better"] for c in claims],
            "joint_better": [c["joint_vs_sequential"]["joint_better"] for c in claims],
            "best_quality_ratio_nonuniform_over_uniform": [
                c["nonuniform_vs_uniform"]["best_quality_ratio_nonuniform_over_uniform"] for c in claims
            ],
            "best_quality_ratio_joint_over_sequential": [
                c["joint_vs_sequential"]["best_quality_ratio_joint_over_sequential"] for c in claims
            ],
        }
    timings["wall_s"] = round(time.perf_counter() - wall, 1)
    result.update(
        {
            "settings": {
                **asdict(settings),
                "parts": sorted(parts),
                "objective": "mse vs FP reference (fixed noise)",
                "granularity_full_space": "block",
                "units_full_space": len(job.space.units),
                "calibration_strategy": args.calibration_strategy,
            },
            "real_evaluations": real.count,
            "real_evaluation_s": round(real.seconds, 1),
            "replayed_or_shared_hits": b.table.hits,
            "timings": timings,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "load_average_start_end": [load_start, round(os.getloadavg()[0], 2)],
            "supernet": str(job.supernet_path),
        }
    )
    print(json.dumps(result, sort_keys=False))
    return result


if __name__ == "__main__":
    main()
