"""Uniform baselines among a job's candidates, and the job's BitOps budget, torch-free.

A candidate is a *uniform baseline* when every weight bit-width is the same, every activation bit-width is the
same, and its timesteps are DDIM's uniform schedule of its step count K for the model's T training timesteps as
the search seeds it (``search.space.baseline_schedule``): exact in the uniform grouping, moved into the groups in
the non-uniform one (where the exact DDIM schedule is usually not in the space). Both groupings' versions count,
so the rule needs only T. T comes from the model's ``scheduler/scheduler_config.json``
(:func:`server.modelcheck.check_model_dir`), cached per model directory; when the model cannot be read any more,
T is taken as :data:`DEFAULT_NUM_TRAIN_TIMESTEPS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import ConfigError, ModelLoadError
from search.space import baseline_schedule
from search.spec import GROUPINGS, UniformBudget, parse_budget
from server.modelcheck import check_model_dir
from server.records import CandidateRecord

if TYPE_CHECKING:
    from server.store import Store

logger = logging.getLogger(__name__)

#: T assumed for a job whose model directory cannot be read.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000


def _uniform(bits: Any) -> int | None:
    """The one bit-width of a ``{site: bits}`` map, or None when they differ (or the map is not one)."""
    if not isinstance(bits, Mapping):
        return None
    values = set(bits.values())
    return int(next(iter(values))) if len(values) == 1 else None


def is_uniform_baseline(candidate: Mapping[str, Any], num_train_timesteps: int = DEFAULT_NUM_TRAIN_TIMESTEPS) -> bool:
    """Whether a candidate (``Candidate.to_dict()`` form) is a uniform baseline for a model of T timesteps."""
    if _uniform(candidate.get("weight_bits")) is None or _uniform(candidate.get("act_bits")) is None:
        return False
    timesteps = candidate.get("timesteps")
    if not isinstance(timesteps, list | tuple) or not timesteps:
        return False
    try:
        schedules = {baseline_schedule(len(timesteps), num_train_timesteps, g) for g in GROUPINGS}
    except ConfigError:
        return False
    return tuple(int(t) for t in timesteps) in schedules


def uniform_bits(candidate: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(weight bits, activation bits)`` of a candidate whose sites all share them, else None."""
    w, a = _uniform(candidate.get("weight_bits")), _uniform(candidate.get("act_bits"))
    return (w, a) if w is not None and a is not None else None


def budget_bitops(spec: Mapping[str, Any], baselines: Iterable[CandidateRecord]) -> float | None:
    """The job's budget in BitOps: a number as given; ``"WxAy@K"`` as the BitOps of that stored uniform baseline
    (None when it was not evaluated, or the spec has no valid budget)."""
    try:
        budget = parse_budget(spec.get("budget"))
    except ConfigError:
        return None
    if not isinstance(budget, UniformBudget):
        return budget
    for record in baselines:
        if (
            record.steps == budget.steps
            and record.bitops is not None
            and uniform_bits(record.candidate) == (budget.w_bits, budget.a_bits)
        ):
            return record.bitops
    return None


class TrainTimesteps:
    """``timesteps(job_id)`` → T of the job's model, read once per model directory (thread-safe).

    Args:
        store: where the jobs' specs are.
        model_root: the server's model root (``Settings.model_root``): model paths must lie under it.
    """

    def __init__(self, store: Store, model_root: Path) -> None:
        self.store = store
        self.model_root = Path(model_root)
        self._known: dict[str, int] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, job_id: int) -> int:
        """T of job ``job_id``'s model; :class:`~search.errors.NotFound` for an unknown job."""
        return self.of_spec(self.store.get_job(job_id).spec)

    def of_spec(self, spec: Mapping[str, Any]) -> int:
        """T of a spec's model (:data:`DEFAULT_NUM_TRAIN_TIMESTEPS` when it cannot be read; not cached then)."""
        model = str(spec.get("model", ""))
        with self._lock:
            known = self._known.get(model)
        if known is not None:
            return known
        try:
            steps = check_model_dir(model, self.model_root).num_train_timesteps
        except ModelLoadError as exc:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                logger.warning("%s; assuming T=%d for its baselines", exc, DEFAULT_NUM_TRAIN_TIMESTEPS)
            return DEFAULT_NUM_TRAIN_TIMESTEPS
        with self._lock:
            self._known[model] = steps
        return steps
