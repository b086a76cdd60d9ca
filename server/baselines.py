"""Uniform baselines among a job's candidates, and the job's BitOps budget, torch-free.

What a *uniform baseline* is, is decided by :func:`search.baselines.is_uniform_baseline` (the local ``tmpq search``
plot uses the same function): every weight bit-width the same, every activation bit-width the same, and its
timesteps DDIM's uniform schedule of its step count K for the model's T training timesteps as the search seeds it.
The rule needs only T. T comes from the model's ``scheduler/scheduler_config.json``
(:func:`server.modelcheck.check_model_dir`), cached per model directory; when the model cannot be read any more,
T is taken as :data:`DEFAULT_NUM_TRAIN_TIMESTEPS`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.baselines import is_uniform_baseline, uniform_bits
from search.errors import ConfigError, ModelLoadError
from search.spec import UniformBudget, parse_budget
from server.modelcheck import ModelInfo, check_model_dir
from server.records import CandidateRecord
from workers.jobspec import spec_field

if TYPE_CHECKING:
    from server.store import Store

logger = logging.getLogger(__name__)

#: T assumed for a job whose model directory cannot be read.
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000


__all__ = [
    "DEFAULT_NUM_TRAIN_TIMESTEPS",
    "TrainTimesteps",
    "budget_bitops",
    "is_uniform_baseline",
    "uniform_bits",
]


def budget_bitops(spec: Mapping[str, Any], baselines: Iterable[CandidateRecord]) -> float | None:
    """The job's budget (``search.budget`` of its spec, either version) in BitOps: a number as given; ``"WxAy@K"``
    as the BitOps of that stored uniform baseline (None when it was not evaluated, or the spec has no valid
    budget)."""
    try:
        budget = parse_budget(spec_field(spec, "search.budget"))
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
        self._known: dict[str, ModelInfo] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, job_id: int) -> int:
        """T of job ``job_id``'s model; :class:`~search.errors.NotFound` for an unknown job."""
        return self.of_spec(self.store.get_job(job_id).spec)

    def of_spec(self, spec: Mapping[str, Any]) -> int:
        """T of a spec's model (``model.path``, either spec version; :data:`DEFAULT_NUM_TRAIN_TIMESTEPS` when it
        cannot be read; not cached then)."""
        info = self.info_of_spec(spec)
        return info.num_train_timesteps if info is not None else DEFAULT_NUM_TRAIN_TIMESTEPS

    def fp_components(self, job_id: int) -> tuple[str, ...]:
        """The components of job ``job_id``'s model that stay in floating point (empty when unknown)."""
        info = self.info_of_spec(self.store.get_job(job_id).spec)
        return info.fp_components if info is not None else ()

    def info_of_spec(self, spec: Mapping[str, Any]) -> ModelInfo | None:
        """What the server knows of a spec's model without loading it; ``None`` (logged once) when it cannot be
        read."""
        model = str(spec_field(spec, "model.path", ""))
        with self._lock:
            known = self._known.get(model)
        if known is not None:
            return known
        try:
            info = check_model_dir(model, self.model_root)
        except ModelLoadError as exc:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                logger.warning("%s; assuming T=%d for its baselines", exc, DEFAULT_NUM_TRAIN_TIMESTEPS)
            return None
        with self._lock:
            self._known[model] = info
        return info
