"""The job driver: ties a job's spec, the supernet, the search and an evaluator together.

``run_job(spec, sink, resume)`` is what the server's runner calls (``workers.protocol`` documents the contract)
and what ``tmpq search`` runs locally. Each generation is handed to the sink (which stores it) before anything
reports it; a sink that raises ``JobInterrupted`` stops the job after that generation was stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search.candidate import Candidate
from search.checkpoint import Checkpoint
from search.cost import CostModel
from search.errors import ConfigError
from search.evaluator import Evaluation, Evaluator
from search.runner import GenerationResult, SearchResult, SearchRunner
from search.space import SearchSpace
from search.spec import SearchSpec

log = logging.getLogger(__name__)

EVALUATORS = ("inprocess", "ray")


@dataclass(frozen=True)
class DriverOptions:
    """How a job is executed (not what it searches: that is the spec).

    Attributes:
        evaluator: ``inprocess`` or ``ray``; ``None`` picks Ray when the spec has a ``ray`` section.
        cache_dir: where supernet artifacts and calibration data are cached (default ``$TMPQ_DATA_DIR``).
        device: torch device for in-process evaluation.
        batch_size: images per forward.
    """

    evaluator: str | None = None
    cache_dir: str | None = None
    device: str = "cpu"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.evaluator is not None and self.evaluator not in EVALUATORS:
            raise ConfigError("evaluator", f"must be one of {EVALUATORS}, got {self.evaluator!r}")

    def evaluator_for(self, spec: SearchSpec) -> str:
        return self.evaluator or ("ray" if spec.ray else "inprocess")


@dataclass
class PreparedJob:
    """A job's model, calibrated supernet and search space, ready to search."""

    spec: SearchSpec
    model: Any
    supernet: Any
    supernet_path: Path
    space: SearchSpace
    cost_model: CostModel
    features_path: str | None
    timings: dict[str, float] = field(default_factory=dict)

    def baselines(self) -> list[Candidate]:
        """The uniform baselines: the DDIM schedule of each K at each uniform precision."""
        return list(self.space.seed_candidates())


def prepare_job(spec: SearchSpec, options: DriverOptions = DriverOptions()) -> PreparedJob:
    """Load the model, get (or calibrate and cache) its supernet, and build the search space."""
    from supernet.artifact import get_or_build_supernet
    from supernet.calibration.settings import CalibrationSettings
    from supernet.zoo.loader import load_model
    from workers.evaluator import EvaluatorConfig

    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = load_model(spec.model, device=options.device)
    spec.validate_for_model(model.num_train_timesteps)
    calib = CalibrationSettings.from_dict(spec.calibration)
    quant_bits = sorted(b for b in spec.bit_options if 2 <= b <= 8)
    if not quant_bits:
        raise ConfigError("bit_options", "needs at least one width in 2..8")
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    supernet = get_or_build_supernet(model, quant_bits, calib_settings=calib, cache_dir=options.cache_dir,
                                     batch_size=options.batch_size)
    timings["supernet_s"] = time.perf_counter() - start
    path = _artifact_path(model, quant_bits, supernet.settings, calib, options.cache_dir)
    space = SearchSpace.from_spec(spec, supernet.sites, model.num_train_timesteps, supernet.site_blocks)
    probe = EvaluatorConfig(model_path=str(model.path), supernet_path=str(path), objective=spec.objective)
    features = probe.resolved_features_path()
    if spec.objective == "fdd" and features is None:
        raise ConfigError("objective", "fdd needs a feature extractor; only the shipped testbed has one")
    if spec.rescore_samples and features is None:
        raise ConfigError("rescore_samples", "re-scoring with FDD needs a feature extractor; only the shipped "
                          "testbed has one (set rescore_samples: 0 for other models)")
    return PreparedJob(spec, model, supernet, path, space, supernet.cost_model, features, timings)


def _artifact_path(model: Any, bits: Sequence[int], settings: Any, calib: Any, cache_dir: str | None) -> Path:
    """Where ``get_or_build_supernet`` caches the artifact for these inputs (Ray actors load it from there)."""
    from supernet.artifact import artifact_name, default_cache_dir, model_identity

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / artifact_name(model_identity(model), bits, settings, calib)


def evaluator_config(job: PreparedJob, *, objective: str | None = None, samples: int | None = None,
                     reference: bool = True, options: DriverOptions = DriverOptions(),
                     threads: int | None = None) -> Any:
    """The picklable :class:`~workers.evaluator.EvaluatorConfig` of a prepared job."""
    from workers.evaluator import EvaluatorConfig

    return EvaluatorConfig(model_path=str(job.model.path), supernet_path=str(job.supernet_path),
                           samples=samples or job.spec.samples, seed=job.spec.seed,
                           reference_steps=job.spec.reference_steps, objective=objective or job.spec.objective,
                           features_path=job.features_path, batch_size=options.batch_size, device=options.device,
                           threads=threads, reference=reference)


def make_evaluator(job: PreparedJob, config: Any, kind: str) -> Evaluator:
    """An in-process evaluator sharing the job's loaded supernet, or a Ray pool built from ``config``."""
    if kind == "ray":
        from workers.pool import RayConfig, RayEvaluator

        return RayEvaluator(config, RayConfig.from_spec(job.spec.ray))
    from supernet.metrics import FDDScorer
    from workers.evaluator import InProcessEvaluator

    scorer = FDDScorer.for_testbed(job.features_path) if job.features_path else None
    return InProcessEvaluator(job.model, job.supernet, config, scorer)


def _close(evaluator: Evaluator) -> None:
    close = getattr(evaluator, "close", None)
    if callable(close):
        close()


def rescore_front(job: PreparedJob, front: Sequence[Evaluation], candidates: dict[str, Candidate],
                  evaluator: Evaluator) -> list[Evaluation]:
    """Re-score every front point with FDD at ``spec.rescore_samples`` (TMPQ-DM re-scores its top candidates)."""
    batch = [candidates[e.key] for e in front]
    rescored = {e.key: e for e in evaluator.evaluate(batch)}
    out = []
    for e in front:
        r = rescored.get(e.key)
        extra = dict(e.extra)
        if r is not None and r.ok:
            extra["fdd_rescored"] = r.quality
            extra["fdd_rescored_samples"] = job.spec.rescore_samples
        else:
            extra["fdd_rescore_error"] = r.error if r is not None else "no result"
        out.append(replace(e, extra=extra))
    return out


def run_job(spec: SearchSpec, sink: Any, resume: Any = None, *, options: DriverOptions = DriverOptions(),
            on_prepared: Callable[[PreparedJob], None] | None = None) -> SearchResult:
    """Run (or resume) one search job, reporting every generation to ``sink`` before anything else sees it.

    ``sink`` follows ``workers.protocol.JobSink`` (``on_generation(record)``; optional ``on_rescored(evals)``);
    ``resume`` is a ``workers.protocol.ResumeState`` or ``None``.
    """
    from workers.protocol import GenerationRecord

    job = prepare_job(spec, options)
    if on_prepared is not None:
        on_prepared(job)
    kind = options.evaluator_for(spec)
    evaluator = make_evaluator(job, evaluator_config(job, options=options), kind)
    try:
        runner = SearchRunner(spec, job.space, evaluator, job.cost_model)

        def on_generation(result: GenerationResult) -> None:
            sink.on_generation(GenerationRecord.from_result(result, runner.checkpoint().to_bytes()))

        known = tuple(resume.known) if resume is not None else ()
        if resume is not None and resume.checkpoint is not None:
            log.info("job %s: resuming after generation %d", getattr(sink, "job_id", "?"), resume.last_generation)
            result = runner.resume(Checkpoint.from_bytes(resume.checkpoint), on_generation, known=known)
        else:
            result = runner.run(on_generation, known=known)
    finally:
        _close(evaluator)
    if spec.rescore_samples and result.front:
        rescorer = make_evaluator(job, evaluator_config(job, objective="fdd", samples=spec.rescore_samples,
                                                        reference=False, options=options), kind)
        try:
            rescored = rescore_front(job, result.front, dict(result.candidates), rescorer)
        finally:
            _close(rescorer)
        sink.on_rescored(rescored)
        result = replace(result, front=tuple(rescored))
    return result
