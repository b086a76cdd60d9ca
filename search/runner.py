"""The search loop: ask, evaluate what is new, tell, report, checkpoint — one generation at a time.

Used by the job driver::

    runner = SearchRunner(spec, space, evaluator, cost_model, checkpoint_path=job_dir / "search.ckpt")
    result = runner.run(on_generation=store_generation)          # or runner.resume(path, known=from_db)

Per generation, in this order: the strategy asks; candidates over the BitOps budget are rejected without
evaluation (their cost is analytic); cached ones are served from the cache; the rest go to the evaluator in
one batch; the strategy is told; the callback gets a :class:`GenerationResult` (the driver stores it); then
the checkpoint is written. A crash between the callback and the checkpoint re-runs that generation on resume,
with the stored evaluations passed as ``known`` so nothing is evaluated twice and the report is the same.

Budget accounting is the number of evaluations (evaluator results, failed ones included), identical for every
algorithm; ``max_evaluations`` caps it exactly (the last generation is cut short).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.algorithms import make_strategy
from search.cache import CacheEntry, EvaluationCache
from search.candidate import Candidate
from search.checkpoint import Checkpoint
from search.cost import CostModel
from search.encoding import Encoding
from search.errors import ConfigError
from search.evaluator import Evaluation, Evaluator, evaluate_safely, priced
from search.evolution import EvolutionParams
from search.fields import read_choice
from search.pareto import ObjectiveScale, knee_point, pareto_front
from search.problem import Outcome
from search.space import SearchSpace
from search.spec import ALGORITHMS, COSTS, SearchSettings, UniformBudget, parse_budget
from search.strategy import BudgetGuard

logger = logging.getLogger(__name__)

#: TMPQ-DM's default budget when its evolution runs without one: the all-W6A6 cost (at the largest K).
TMPQ_DEFAULT_BITS = 6


@dataclass(frozen=True)
class RunnerConfig:
    """The settings the search loop needs (a :class:`SearchSettings` converts with :meth:`from_spec`).

    Attributes:
        algorithm: ``nsga2``, ``tmpq_evolution`` or ``random``.
        population: candidates per generation.
        generations: generations to run (a resumed run continues up to this number).
        seed: seed of every random choice of the search.
        budget: ``None``, BitOps, or ``"WxAy@K"`` / :class:`UniformBudget`.
        cost: the second objective, ``bitops`` or ``latency`` (the cost model's latency table must be measured).
        max_evaluations: stop after this many evaluations (``None``: no cap).
        evolution: settings of ``tmpq_evolution``.
        quality_ref: quality mapped to 1 in the hypervolume (``None``: the worst successful quality of
            generation 0).
    """

    algorithm: str = "nsga2"
    population: int = 50
    generations: int = 20
    seed: int = 0
    budget: float | UniformBudget | str | None = None
    cost: str = "bitops"
    max_evaluations: int | None = None
    evolution: EvolutionParams = field(default_factory=EvolutionParams)
    quality_ref: float | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("algorithm", f"must be one of {list(ALGORITHMS)}, got {self.algorithm!r}")
        for name, low in (("population", 2), ("generations", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")
        if self.max_evaluations is not None and (not isinstance(self.max_evaluations, int) or self.max_evaluations < 1):
            raise ConfigError("max_evaluations", f"must be a positive integer, got {self.max_evaluations!r}")
        if self.quality_ref is not None and not (self.quality_ref > 0 and math.isfinite(self.quality_ref)):
            raise ConfigError("quality_ref", f"must be positive and finite, got {self.quality_ref!r}")
        if not isinstance(self.budget, UniformBudget):
            object.__setattr__(self, "budget", parse_budget(self.budget))
        object.__setattr__(self, "cost", read_choice(self.cost, "cost", COSTS))
        self.evolution.resolve(self.population)

    @classmethod
    def from_spec(cls, spec: SearchSettings, **overrides: Any) -> RunnerConfig:
        """The loop settings of a job spec; ``overrides`` set the fields a spec does not have."""
        base = {
            "algorithm": spec.algorithm,
            "population": spec.population,
            "generations": spec.generations,
            "seed": spec.seed,
            "budget": spec.budget,
            "cost": spec.cost,
        }
        return cls(**{**base, **overrides})

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resume must share with the run it continues (all but generations, max_evaluations)."""
        budget = str(self.budget) if isinstance(self.budget, UniformBudget) else self.budget
        return {
            "algorithm": self.algorithm,
            "population": self.population,
            "seed": self.seed,
            "budget": budget,
            "cost": self.cost,
            "evolution": dataclasses.asdict(self.evolution),
            "quality_ref": self.quality_ref,
        }


def resolve_budget(
    budget: float | UniformBudget | None, cost_model: CostModel, space: SearchSpace, algorithm: str = "nsga2"
) -> float | None:
    """The budget in BitOps; ConfigError on ``budget`` when even the cheapest candidate exceeds it.

    ``tmpq_evolution`` without a budget gets TMPQ-DM's default, uniform W6A6 at the largest K.
    """
    if budget is None and algorithm == "tmpq_evolution":
        budget = UniformBudget(TMPQ_DEFAULT_BITS, TMPQ_DEFAULT_BITS, space.max_steps)
        logger.info("tmpq_evolution without a budget: using %s", budget)
    if budget is None:
        return None
    if isinstance(budget, UniformBudget):
        value = cost_model.uniform_cost(budget.w_bits, budget.a_bits, budget.steps).bitops
    else:
        value = float(budget)
    cheapest = space.cheapest()
    floor = cost_model.cost(cheapest).bitops
    if floor > value:
        raise ConfigError(
            "budget",
            f"no candidate meets {budget} ({value:.4g} BitOps): the cheapest, "
            f"{cheapest.bits_summary()} at K={cheapest.steps}, costs {floor:.4g}",
        )
    return value


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced, as reported to the callback.

    Attributes:
        generation: index, from 0.
        evaluations: evaluations first belonging to this generation (failed ones included), in ask order.
        candidates: the candidates of ``evaluations`` and of ``front``, by key.
        front: the feasible non-dominated evaluations of the whole search so far, by cost (BitOps or latency).
        hypervolume: of ``front`` under the job's :class:`~search.pareto.ObjectiveScale` (0 before there is a
            reference quality).
        evaluated: evaluations so far (the evaluation budget used).
        failed: failed evaluations so far.
        skipped: candidates of this generation rejected without evaluation for exceeding the budget.
    """

    generation: int
    evaluations: tuple[Evaluation, ...]
    candidates: Mapping[str, Candidate]
    front: tuple[Evaluation, ...]
    hypervolume: float
    evaluated: int
    failed: int
    skipped: int


@dataclass(frozen=True)
class SearchResult:
    """The end of a search: its front, history and why it stopped."""

    front: tuple[Evaluation, ...]
    candidates: Mapping[str, Candidate]
    hypervolumes: tuple[float, ...]
    generations: int
    evaluated: int
    failed: int
    stopped: str
    axis: str = "bitops"

    def knee(self) -> Evaluation | None:
        """The knee point of the front (None when the front is empty)."""
        return knee_point(self.front, axis=self.axis) if self.front else None


def _digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


OnGeneration = Callable[[GenerationResult], None]

_EVALUATE, _CACHED, _SKIP = "evaluate", "cached", "skip"


class SearchRunner:
    """Runs one search job with any of the algorithms, one evaluator and one cache.

    Args:
        config: a :class:`RunnerConfig` or the job's :class:`SearchSettings`.
        space: the search space (from the spec and the model).
        evaluator: measures candidates.
        cost_model: prices candidates (BitOps for the budget, and BitOps or its latency table's milliseconds for
            the objective).
        checkpoint_path: where to write the checkpoint after each generation (None: keep it in memory only;
            :meth:`checkpoint` still returns it).
    """

    def __init__(
        self,
        config: RunnerConfig | SearchSettings,
        space: SearchSpace,
        evaluator: Evaluator,
        cost_model: CostModel,
        *,
        checkpoint_path: str | Path | None = None,
    ) -> None:
        self.config = config if isinstance(config, RunnerConfig) else RunnerConfig.from_spec(config)
        self.space = space
        self.encoding = Encoding(space)
        self.evaluator = evaluator
        self.cost_model = cost_model
        self.axis = self.config.cost
        if self.axis == "latency" and cost_model.latency is None:
            raise ConfigError("cost", "searching latency needs a measured latency table (evaluation.latency_backend)")
        self.budget = resolve_budget(self.config.budget, cost_model, space, self.config.algorithm)
        self.guard = BudgetGuard(cost_model, self.budget)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        if self.axis == "latency":
            assert cost_model.latency is not None
            low, high = cost_model.latency.step_range(space.bit_options)
            self._cost_range = (low * space.steps[0], high * space.steps[-1])
        else:
            self._cost_range = (cost_model.cost(space.cheapest()).bitops, cost_model.cost(space.dearest()).bitops)
        self._state: Checkpoint | None = None
        self._stop_requested = False

    # -- public API -------------------------------------------------------------------------------------

    def run(
        self, on_generation: OnGeneration | None = None, *, known: Iterable[tuple[Candidate, Evaluation]] = ()
    ) -> SearchResult:
        """Search from scratch; ``known`` pre-fills the cache (those candidates are not evaluated again)."""
        strategy = make_strategy(
            self.config.algorithm,
            self.encoding,
            self.guard,
            self.config.population,
            self.config.seed,
            self.config.evolution,
        )
        self._state = Checkpoint(self.fingerprint(), 0, strategy, EvaluationCache(), [], self.config.quality_ref)
        return self._start(on_generation, known)

    def resume(
        self,
        checkpoint: Checkpoint | str | Path,
        on_generation: OnGeneration | None = None,
        *,
        known: Iterable[tuple[Candidate, Evaluation]] = (),
    ) -> SearchResult:
        """Continue from a checkpoint up to ``config.generations``; ends as an uninterrupted run would."""
        if isinstance(checkpoint, Checkpoint):
            state = Checkpoint.from_bytes(checkpoint.to_bytes())  # a private copy; the caller's stays as it was
        else:
            state = Checkpoint.load(checkpoint)
        mine = self.fingerprint()
        changed = sorted(k for k in mine.keys() | state.fingerprint.keys() if mine.get(k) != state.fingerprint.get(k))
        if changed:
            raise ConfigError("checkpoint", f"was written with other settings: {', '.join(changed)}")
        self._state = state
        return self._start(on_generation, known)

    def request_stop(self) -> None:
        """Stop after the current generation (safe to call from the callback or another thread)."""
        self._stop_requested = True

    def checkpoint(self) -> Checkpoint:
        """A snapshot of the current state (independent of later generations)."""
        return Checkpoint.from_bytes(self._require_state().to_bytes())

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed by this runner."""
        s = self.space
        return {
            **self.config.fingerprint(),
            "budget_bitops": self.budget,
            "cost_model": _digest(self.cost_model.to_dict()),
            "latency": self._latency_key(),
            "space": {
                "T": s.num_train_timesteps,
                "steps": list(s.steps),
                "bit_options": list(s.bit_options),
                "grouping": s.grouping,
                "granularity": s.granularity,
                "sites": list(s.sites),
                "units": list(s.units),
            },
        }

    def _latency_key(self) -> dict[str, Any] | None:
        """What a resumed latency search must share: the table's backend and batch size (not its measured values,
        which a re-measurement changes by noise)."""
        table = self.cost_model.latency
        if self.axis != "latency" or table is None:
            return None
        return {"backend": table.backend, "batch_size": table.batch_size}

    @property
    def cache(self) -> EvaluationCache:
        return self._require_state().cache

    @property
    def generation(self) -> int:
        """Completed generations."""
        return self._require_state().generation

    # -- the loop ---------------------------------------------------------------------------------------

    def _require_state(self) -> Checkpoint:
        if self._state is None:
            raise RuntimeError("the search has not started: call run() or resume()")
        return self._state

    def _start(self, on_generation: OnGeneration | None, known: Iterable[tuple[Candidate, Evaluation]]) -> SearchResult:
        state = self._require_state()
        state.stopped = None
        added = state.cache.prefill((c, priced(e, c, self.cost_model)) for c, e in known)
        if added:
            logger.info("pre-filled the cache with %d known evaluations", added)
        self._stop_requested = False
        while (reason := self._stop_reason()) is None:
            result = self._step()
            if result is None:
                reason = "exhausted"
                break
            if on_generation is not None:
                on_generation(result)
            self._save()
        state.stopped = reason
        self._save()
        logger.info(
            "search stopped (%s) after %d generations, %d evaluations",
            reason,
            state.generation,
            state.cache.evaluated,
        )
        return self._result()

    def _stop_reason(self) -> str | None:
        state = self._require_state()
        if self._stop_requested:
            return "requested"
        if state.generation >= self.config.generations:
            return "generations"
        cap = self.config.max_evaluations
        if cap is not None and state.cache.evaluated >= cap:
            return "max_evaluations"
        return None

    def _step(self) -> GenerationResult | None:
        state = self._require_state()
        gen = state.generation
        asked = state.strategy.ask()
        if not asked:
            logger.info("generation %d: the strategy proposed nothing new", gen)
            return None
        plan = self._plan(asked)
        to_evaluate = [c for c, action in plan if action == _EVALUATE]
        for candidate, evaluation in zip(
            to_evaluate, evaluate_safely(self.evaluator, to_evaluate, self.cost_model), strict=True
        ):
            state.cache.add(candidate, evaluation, gen)
        new = [
            c for c, action in plan if action == _EVALUATE or (action == _CACHED and state.cache.claim(c.key(), gen))
        ]
        state.strategy.tell([self._outcome(c, action) for c, action in plan])
        state.generation += 1
        return self._report(gen, new, skipped=sum(1 for _, action in plan if action == _SKIP))

    def _plan(self, asked: list[Candidate]) -> list[tuple[Candidate, str]]:
        """What to do with each asked candidate, cut where the evaluation cap would be exceeded."""
        cache = self._require_state().cache
        cap = self.config.max_evaluations
        room = math.inf if cap is None else cap - cache.evaluated
        plan: list[tuple[Candidate, str]] = []
        planned: set[str] = set()
        for candidate in asked:
            key = candidate.key()
            if not self.guard.allows(candidate):
                action = _SKIP
            elif key in planned:
                action = _CACHED
            elif key in cache:
                action = _CACHED
                room -= 1 if self._entry(key).generation is None else 0
            else:
                action = _EVALUATE
                room -= 1
            if room < 0:
                break
            planned.add(key)
            plan.append((candidate, action))
        return plan

    def _entry(self, key: str) -> CacheEntry:
        entry = self._require_state().cache.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def _outcome(self, candidate: Candidate, action: str) -> Outcome:
        if action == _SKIP:
            cost = self.cost_model.cost(candidate)
            return Outcome(candidate.key(), math.nan, cost.bitops, evaluated=False, cost=self._objective(cost))
        e = self._entry(candidate.key()).evaluation
        return Outcome(e.key, e.quality, e.bitops, failed=not e.ok, cost=self._objective(e))

    def _objective(self, value: Any) -> float | None:
        """The latency objective of a :class:`Cost` or :class:`Evaluation` (``None``: the objective is BitOps)."""
        return value.latency_ms if self.axis == "latency" else None

    # -- reporting --------------------------------------------------------------------------------------

    def _report(self, gen: int, new: list[Candidate], skipped: int) -> GenerationResult:
        state = self._require_state()
        evaluations = [self._entry(c.key()).evaluation for c in new]
        state.front = pareto_front([*state.front, *evaluations], self.budget, self.axis)
        if state.quality_ref is None:
            state.quality_ref = self._first_quality_ref()
        hv = self._hypervolume(state.front, state.quality_ref)
        state.hypervolumes.append(hv)
        candidates = {c.key(): c for c in new}
        candidates.update({e.key: self._entry(e.key).candidate for e in state.front})
        result = GenerationResult(
            gen,
            tuple(evaluations),
            candidates,
            tuple(state.front),
            hv,
            state.cache.evaluated,
            state.cache.failed,
            skipped,
        )
        logger.info(
            "generation %d: %d new evaluations (%d failed so far, %d over budget), front %d, HV %.4f",
            gen,
            len(evaluations),
            result.failed,
            skipped,
            len(state.front),
            hv,
        )
        return result

    def _first_quality_ref(self) -> float | None:
        qualities = [e.evaluation.quality for e in self._require_state().cache.claimed() if e.evaluation.ok]
        if not qualities:
            return None
        worst = max(qualities)
        return worst if worst > 0 else 1.0

    def _hypervolume(self, front: list[Evaluation], quality_ref: float | None) -> float:
        low, high = self._cost_range
        if quality_ref is None or not front or not low > 0:
            return 0.0
        return ObjectiveScale(low, high, quality_ref, axis=self.axis).hypervolume(front)

    def _result(self) -> SearchResult:
        state = self._require_state()
        candidates = {e.key: self._entry(e.key).candidate for e in state.front}
        return SearchResult(
            tuple(state.front),
            candidates,
            tuple(state.hypervolumes),
            state.generation,
            state.cache.evaluated,
            state.cache.failed,
            state.stopped or "unknown",
            self.axis,
        )

    def _save(self) -> None:
        if self.checkpoint_path is not None:
            self._require_state().save(self.checkpoint_path)
