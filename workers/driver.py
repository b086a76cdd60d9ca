"""The job driver: ties a job's spec, the supernet, the search and an evaluator together.

``run_job(spec, sink, resume)`` is what the server's runner calls (``workers.protocol`` documents the contract)
and what ``tmpq search`` runs locally, with a :class:`~workers.jobspec.JobSpec` already validated against its model
(:func:`workers.jobspec.validate_job`). Each generation is handed to the sink (which stores it) before anything
reports it; a sink that raises ``JobInterrupted`` stops the job after that generation was stored. While the job
loads, calibrates, searches and re-scores, what it is doing goes to the sink's optional ``on_progress``.
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
from search.runner import GenerationResult, SearchResult, SearchRunner, resolve_budget
from search.space import SearchSpace
from workers.jobspec import JobSpec

log = logging.getLogger(__name__)

EVALUATORS = ("inprocess", "ray")


#: At most one progress report per this many seconds (the last one of a stage always goes out).
PROGRESS_INTERVAL_S = 1.0


@dataclass(frozen=True)
class DriverOptions:
    """How a job is executed on this installation: the operator's choices, not the job's (that is the spec).

    Attributes:
        evaluator: ``inprocess`` or ``ray``; ``None`` picks Ray when the spec's ``execution.ray`` names resources.
        cache_dir: where supernet artifacts and calibration data are cached (default ``$TMPQ_DATA_DIR``).
        ray_address: the Ray cluster to join (``None``: ``$TMPQ_RAY_ADDRESS``, else a local Ray).
    """

    evaluator: str | None = None
    cache_dir: str | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.evaluator is not None and self.evaluator not in EVALUATORS:
            raise ConfigError("evaluator", f"must be one of {EVALUATORS}, got {self.evaluator!r}")

    def evaluator_for(self, spec: JobSpec) -> str:
        return self.evaluator or ("ray" if spec.execution.ray else "inprocess")


def resolve_device(device: str) -> str:
    """A job's ``model.device`` for this process: ``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ProgressReporter:
    """Sends what a job is doing to its sink's optional ``on_progress`` (see :mod:`workers.protocol`), at most
    once per :data:`PROGRESS_INTERVAL_S` within a stage; a new stage always goes out."""

    def __init__(self, sink: Any, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._sink = sink
        self._send = getattr(sink, "on_progress", None)
        self._interval = interval_s
        self._last = (None, -float("inf"))
        #: Where the last calibration report said the supernet came from (``calibrating``, ``cache``, ``shipped``).
        self.source: str | None = None

    def __call__(
        self, stage: str, message: str, calibration: dict[str, Any] | None = None, *, force: bool = False
    ) -> None:
        """Report ``message`` in ``stage``; a report within the interval of the last one in the same stage is
        dropped unless it is final (calibration done) or ``force`` (a one-off line that must be seen)."""
        if self._send is None:
            return
        now = time.monotonic()
        last_stage, last_at = self._last
        if stage == last_stage and now - last_at < self._interval and not (force or _final(calibration)):
            return
        self._last = (stage, now)
        self._send({"stage": stage, "message": message, "calibration": calibration})

    def warning(self, stage: str, message: str) -> None:
        """A warning the job goes on after: kept with the job (``on_warning``) and shown as activity."""
        from workers.protocol import report_warning

        report_warning(self._sink, message)
        self(stage, f"warning: {message}", force=True)

    def calibration(self, progress: Any) -> None:
        """A ``supernet.progress.CalibrationProgress`` as a ``calibrating`` report."""
        info = progress.to_dict()
        self.source = info.get("source")
        self("calibrating", describe_calibration(info), info)

    def calibrated(self, summary: dict[str, Any]) -> None:
        """The job's supernet is ready: its summary goes to the sink's optional ``on_calibration``."""
        from workers.protocol import report_calibration

        report_calibration(self._sink, summary)


def _final(calibration: dict[str, Any] | None) -> bool:
    return bool(calibration) and calibration.get("phase") == "done"


def describe_calibration(info: dict[str, Any]) -> str:
    """One line for a calibration progress report, e.g. ``W6 (2/3): reconstruction 7/12, round 1``."""
    if info.get("source") in ("cache", "shipped"):
        return f"supernet loaded ({info['source']})"
    bits = info.get("bits")
    head = f"W{bits} ({info.get('bit_index', 0) + 1}/{info.get('bit_count', '?')})" if bits else "FP"
    text = f"{head}: {info.get('phase', '?')}"
    if info.get("total"):
        text += f" {info.get('step', 0)}/{info['total']}"
    if info.get("round"):
        text += f", round {info['round']}"
    return text


@dataclass
class PreparedJob:
    """A job's model, calibrated supernet and search space, ready to search."""

    spec: JobSpec
    model: Any
    supernet: Any
    supernet_path: Path
    space: SearchSpace
    cost_model: CostModel
    features_path: str | None
    timings: dict[str, float] = field(default_factory=dict)
    conditioning: Any = None

    def baselines(self) -> list[Candidate]:
        """The uniform baselines: the DDIM schedule of each K at each uniform precision."""
        return list(self.space.seed_candidates())


def prepare_job(
    spec: JobSpec, options: DriverOptions = DriverOptions(), report: ProgressReporter | None = None
) -> PreparedJob:
    """Load the model, get (or calibrate and cache) its supernet, and build the search space.

    ``spec`` is checked against the loaded model again (cheap) so that a spec built in code, not through
    :func:`~workers.jobspec.validate_job`, cannot run what the model cannot.
    """
    from supernet.artifact import default_cache_dir, get_or_build_supernet

    report = report or ProgressReporter(None)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    spec, model, features, conditioning = load_job_model(spec, report)
    bits = spec.search.quantized_bits
    evaluation = spec.evaluation
    timings["load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report("calibrating", "getting the calibrated supernet")
    supernet = get_or_build_supernet(
        model,
        bits,
        spec.quantization,
        calib_settings=spec.calibration,
        cache_dir=options.cache_dir,
        batch_size=spec.evaluation.batch_size,
        progress=report.calibration,
    )
    timings["supernet_s"] = time.perf_counter() - start
    root = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
    path = root / job_supernet_name(spec, model)
    report.calibrated(calibration_summary(supernet, path.name, report.source or "calibrating"))
    space = _search_space(spec, supernet)
    cost_model = supernet.cost_model
    if evaluation.latency_backend is not None:
        start = time.perf_counter()
        cost_model = cost_model.with_latency(_latency_table(spec, supernet, root, path.name, report))
        timings["latency_table_s"] = time.perf_counter() - start
    features_path = str(features) if features is not None else None
    return PreparedJob(spec, model, supernet, path, space, cost_model, features_path, timings, conditioning)


#: Sites (or blocks) of the report's error ranking kept per bit option in a job's calibration summary.
SUMMARY_WORST = 5


def calibration_summary(supernet: Any, name: str, source: str) -> dict[str, Any]:
    """What a job's status shows of its calibrated supernet: the artifact ``name``, where it came from (``source``:
    ``calibrating``, ``cache`` or ``shipped``), the calibration seconds and estimate, and from the calibration report
    (``supernet.calibration.report``) per bit option the uniform candidate's MSE and PSNR against FP with the
    :data:`SUMMARY_WORST` worst sites, plus the range-fit check. An artifact written before reports existed has
    ``report: null``."""
    meta = supernet.calibration_metadata
    report = meta.get("report") or {}
    seconds = {str(b): round(float(v), 1) for b, v in supernet.calibration_seconds.items()}
    summary: dict[str, Any] = {
        "supernet": name,
        "source": "calibrated" if source == "calibrating" else source,
        "strategy": supernet.calib_settings.strategy,
        "seconds": seconds,
        "estimate_s": (meta.get("estimate") or {}).get("seconds"),
        "report": None,
    }
    if report.get("skipped"):
        summary["report"] = {"skipped": report["skipped"]}
    elif report.get("bits"):
        summary["report"] = {
            "steps": len(report.get("schedule") or ()),
            "samples": report.get("samples"),
            "bits": {
                b: {"mse": row.get("mse"), "psnr": row.get("psnr"), "worst": (row.get("ranking") or [])[:SUMMARY_WORST]}
                for b, row in report["bits"].items()
            },
            "ranking": (report.get("ranking") or {}).get("granularity"),
            "range_check": report.get("range_check"),
        }
    return summary


def load_job_model(spec: JobSpec, report: ProgressReporter | None = None) -> tuple[JobSpec, Any, Any, Any]:
    """Load ``spec``'s model and check the job against it before any calibration: ``(spec with the evaluation
    resolved for the model, model adapter, its features directory or None, the conditioning)``."""
    from supernet.models import features_for, load_model

    report = report or ProgressReporter(None)
    report("loading", f"loading {Path(spec.model.path).name}")
    conditioning = spec.model.conditioning(spec.model.path)
    model = load_model(spec.model.path, device=resolve_device(spec.model.device), conditioning=conditioning)
    for warning in getattr(model, "warnings", ()):
        report.warning("loading", warning)
    features = features_for(model.path)
    try:
        evaluation = spec.evaluation.resolved_for_model(model.num_train_timesteps, features is not None)
    except ConfigError as exc:
        raise ConfigError(f"evaluation.{exc.field}", exc.reason) from None
    spec = spec.replace(evaluation=evaluation)
    _check_space(spec, model, spec.search.quantized_bits)
    if evaluation.features is not None:
        _check_feature_program(evaluation.features, model, report)
    return spec, model, features, conditioning


def calibration_plan(spec: JobSpec, options: DriverOptions = DriverOptions()) -> dict[str, Any]:
    """What getting ``spec``'s supernet will do, without doing it: ``{"supernet": name, "source": "cache" |
    "shipped" | "calibrate", "path": where it is or will be, "estimate": seconds by phase (only to calibrate)}``.
    Loads the model and checks the job first (cheap), as :func:`prepare_job` does."""
    from supernet.artifact import default_cache_dir, find_supernet
    from supernet.calibration.estimate import estimate_calibration

    spec, model, _, _ = load_job_model(spec)
    root = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
    name = job_supernet_name(spec, model)
    found = find_supernet(model, name, root)
    plan: dict[str, Any] = {"supernet": name, "bits": list(spec.search.quantized_bits)}
    if found is not None:
        source, path = found
        return {**plan, "source": source, "path": str(path)}
    estimate = estimate_calibration(model, spec.search.quantized_bits, spec.calibration)
    return {**plan, "source": "calibrate", "path": str(root / name), "estimate": estimate.to_dict()}


def _latency_table(spec: JobSpec, supernet: Any, root: Path, name: str, report: ProgressReporter) -> Any:
    """The job's latency table on its backend (measured on this machine the first time, then cached)."""
    from supernet.runtime.latency import get_or_measure_latency_table, latency_table_path, latency_unavailable

    backend = spec.evaluation.latency_backend
    why = latency_unavailable(supernet)
    if why is not None:
        raise ConfigError("evaluation.latency_backend", f"{backend} cannot be measured on this worker: {why}")
    batch = spec.evaluation.latency_batch
    if not latency_table_path(root, name, backend, batch).exists():
        message = f"measuring the {backend} latency table at batch {batch} (once per machine)"
        report("calibrating", message, force=True)
    return get_or_measure_latency_table(supernet, root, name, backend, batch)


def _check_feature_program(path: str, model: Any, report: ProgressReporter) -> None:
    """Load the job's feature program and run it on two blank images of the model's output shape, before any
    calibration: an ``evaluation.features`` ConfigError when it is not a program that takes them."""
    import torch

    from supernet.feature_space import FeatureSpace

    with torch.no_grad():
        shape = tuple(model.decode(torch.zeros(1, *model.sample_shape, device=model.device)).shape[1:])
    dim = FeatureSpace.load(path).check(shape)
    report("loading", f"feature program {Path(path).name}: {dim} features per image", force=True)


def _search_space(spec: JobSpec, supernet: Any) -> SearchSpace:
    """The job's search space over ``supernet``'s sites; a ``search.*`` ConfigError when the model cannot run it
    (the budget included: an absolute BitOps budget below the cheapest candidate)."""
    try:
        space = SearchSpace.from_spec(
            spec.search,
            supernet.sites,
            supernet.model.num_train_timesteps,
            supernet.site_units(spec.search.granularity),
        )
        resolve_budget(spec.search.budget, supernet.cost_model, space, spec.search.algorithm)
    except ConfigError as exc:
        raise ConfigError(f"search.{exc.field}", exc.reason) from None
    return space


def job_supernet_name(spec: JobSpec, model: Any) -> str:
    """The artifact name of ``spec``'s calibrated supernet for its loaded ``model`` (the cache key: model, bits,
    calibration, quantization, a conditional model's condition)."""
    from supernet.identity import supernet_artifact_name

    return supernet_artifact_name(
        model.path,
        spec.search.quantized_bits,
        spec.calibration,
        known_hash=model.model_hash,
        settings=spec.quantization,
        condition_key=model.condition_key,
    )


def _check_space(spec: JobSpec, model: Any, bits: Sequence[int]) -> None:
    """Check the search space and budget against the model's sites and costs *before* calibrating: the sites are
    installed uncalibrated (cheap: one traced forward for the cost model), checked, and removed again."""
    from supernet.settings import excluded
    from supernet.supernet import QuantSupernet

    names = [name for name, _ in model.denoiser.named_modules()]
    for prefix in spec.quantization.exclude:
        if not any(excluded(name, (prefix,)) for name in names):
            raise ConfigError("quantization.exclude", f"the model's denoiser has no module {prefix!r}")
    probe = QuantSupernet.build(
        model, bits, spec.quantization, calib_settings=spec.calibration, model_hash=model.model_hash
    )
    try:
        _search_space(spec, probe)
    finally:
        probe.detach()


def evaluator_config(
    job: PreparedJob,
    *,
    objective: str | None = None,
    samples: int | None = None,
    reference: bool = True,
    options: DriverOptions = DriverOptions(),
    threads: int | None = None,
    schedule_reference: bool = False,
) -> Any:
    """The picklable :class:`~workers.evaluator.EvaluatorConfig` of a prepared job."""
    from supernet.models import prompt_labels_for
    from workers.evaluator import EvaluatorConfig

    return EvaluatorConfig(
        model_path=str(job.model.path),
        supernet_path=str(job.supernet_path),
        samples=samples or job.spec.evaluation.samples,
        seed=job.spec.search.seed,
        reference_steps=job.spec.evaluation.reference_steps,
        objective=objective or job.spec.evaluation.objective,
        features_path=job.features_path,
        batch_size=job.spec.evaluation.batch_size,
        device=resolve_device(job.spec.model.device),  # Ray actors use their own (CUDA when they hold a GPU)
        dtype=job.spec.model.dtype,
        allow_tf32=job.spec.model.tf32,
        threads=threads,
        reference=reference,
        solver=job.spec.search.solver,
        conditioning=job.conditioning.to_dict() if job.conditioning is not None else None,
        prompt_labels=prompt_labels_for(job.model.path) if job.conditioning is not None else None,
        feature_program=job.spec.evaluation.features,
        schedule_reference=schedule_reference,
    )


def make_evaluator(job: PreparedJob, config: Any, kind: str, options: DriverOptions = DriverOptions()) -> Evaluator:
    """An in-process evaluator sharing the job's loaded supernet, or a Ray pool built from ``config`` (on the
    operator's cluster, ``options.ray_address``, with the job's ``execution.ray`` resources)."""
    if kind == "ray":
        from workers.pool import RayConfig, RayEvaluator

        operator = {"address": options.ray_address} if options.ray_address else {}
        return RayEvaluator(config, RayConfig.for_job(job.spec.execution.ray, **operator))
    from supernet.metrics import FDDScorer
    from workers.evaluator import InProcessEvaluator

    scorer = FDDScorer.for_testbed(job.features_path) if job.features_path else None
    return InProcessEvaluator(job.model, job.supernet, config, scorer)


def _close(evaluator: Evaluator) -> None:
    close = getattr(evaluator, "close", None)
    if callable(close):
        close()


#: The per-image metrics a front analysis adds to a point besides the ``quant_`` ones (older jobs lack them).
STRUCTURAL_METRICS = ("ssim", "mean_drift", "std_drift")
#: The metrics of an FP reference point (against the long FP reference), as stored with the job.
REFERENCE_METRICS = ("mse", "psnr", "ssim", "mean_drift", "std_drift", "fd")


def fp_candidates(job: PreparedJob, front: Sequence[Evaluation], candidates: dict[str, Candidate]) -> list[Candidate]:
    """The FP model on each distinct schedule of ``front`` (fewest steps first): its reference points."""
    schedules = sorted({candidates[e.key].timesteps for e in front}, key=lambda t: (len(t), t))
    return [job.supernet.uniform(32, 32, s) for s in schedules]


def analyse_front(
    job: PreparedJob,
    front: Sequence[Evaluation],
    candidates: dict[str, Candidate],
    references: Sequence[Candidate],
    evaluator: Evaluator,
) -> tuple[list[Evaluation], list[dict[str, Any]]]:
    """Separate the error of fewer steps from the error of fewer bits.

    ``evaluator`` (built with ``schedule_reference``) samples the FP model on each of the front's schedules
    (``references``, from :func:`fp_candidates`, evaluated first so an in-process evaluator reuses their samples)
    and every front point again: each point gains ``quant_mse``, ``quant_psnr``, ``quant_ssim``, … (against FP at
    its own schedule: the quantization's error) beside its ``mse``, … (against the long reference: the total
    error), and each schedule becomes a reference point ``{"steps", "timesteps", "bitops", "quality", "mse", …}``
    (``quality`` is the job's objective when the analysis measured it, else ``None``).
    """
    results = {r.key: r for r in evaluator.evaluate([*references, *(candidates[e.key] for e in front)])}
    objective = job.spec.evaluation.objective
    points = []
    for c in references:
        r = results.get(c.key())
        point: dict[str, Any] = {"key": c.key(), "steps": c.steps, "timesteps": list(c.timesteps)}
        if r is not None and r.ok:
            point.update({"bitops": r.bitops, "quality": r.extra.get(objective)})
            point.update({m: r.extra[m] for m in REFERENCE_METRICS if m in r.extra})
        else:
            point["error"] = r.error if r is not None else "no result"
        points.append(point)
    out = []
    for e in front:
        r = results.get(e.key)
        extra = dict(e.extra)
        if r is not None and r.ok:
            extra.update({k: v for k, v in r.extra.items() if k.startswith("quant_") or k in STRUCTURAL_METRICS})
        else:
            extra["analysis_error"] = r.error if r is not None else "no result"
        out.append(replace(e, extra=extra))
    return out, points


def rescore_front(
    job: PreparedJob,
    front: Sequence[Evaluation],
    candidates: dict[str, Candidate],
    evaluator: Evaluator,
    references: Sequence[tuple[Candidate, dict[str, Any]]] = (),
) -> list[Evaluation]:
    """Re-score every front point with FDD at ``spec.rescore_samples`` (TMPQ-DM re-scores its top candidates); on
    the digits-sd testbed the prompt accuracy of those samples comes along (``prompt_accuracy_rescored``).

    ``references`` (FP reference points: the candidate and its point from :func:`analyse_front`) are re-scored in
    the same batch; each point gains ``fdd_rescored`` in place.
    """
    batch = [*(c for c, _ in references), *(candidates[e.key] for e in front)]
    rescored = {e.key: e for e in evaluator.evaluate(batch)}
    for c, point in references:
        r = rescored.get(c.key())
        if r is not None and r.ok:
            point["fdd_rescored"] = r.quality
    out = []
    for e in front:
        r = rescored.get(e.key)
        extra = dict(e.extra)
        if r is not None and r.ok:
            extra["fdd_rescored"] = r.quality
            extra["fdd_rescored_samples"] = job.spec.evaluation.rescore_samples
            if "prompt_accuracy" in r.extra:  # the digits-sd testbed: on the re-scoring's many more samples
                extra["prompt_accuracy_rescored"] = r.extra["prompt_accuracy"]
        else:
            extra["fdd_rescore_error"] = r.error if r is not None else "no result"
        out.append(replace(e, extra=extra))
    return out


def finish_front(
    job: PreparedJob,
    result: SearchResult,
    sink: Any,
    kind: str,
    options: DriverOptions,
    report: Callable[[str, str], None],
) -> SearchResult:
    """After the search: the front analysis (:func:`analyse_front`, in this process with the job's loaded supernet)
    and the FDD re-scoring (with the search's evaluator kind, when the job has ``rescore_samples``), stored through
    ``sink.on_rescored`` (the points' extras) and :func:`workers.protocol.report_fp_references` (the FP reference
    points)."""
    from workers.protocol import report_fp_references

    spec, front, candidates = job.spec, result.front, dict(result.candidates)
    references = fp_candidates(job, front, candidates)
    report("analysing", f"FP on the front's {len(references)} schedules, and each point's quantization error")
    objective = "mse" if spec.evaluation.objective == "latent_mse" else spec.evaluation.objective
    config = evaluator_config(job, objective=objective, options=options, schedule_reference=True)
    # in this process, as the sample grids: a front's worth of samplings does not pay for starting a pool
    analyser = make_evaluator(job, config, "inprocess", options)
    try:
        front, points = analyse_front(job, front, candidates, references, analyser)
    finally:
        _close(analyser)
    samples = spec.evaluation.rescore_samples
    if samples:
        report("rescoring", f"re-scoring {len(front)} front points and {len(points)} FP references, {samples} samples")
        config = evaluator_config(job, objective="fdd", samples=samples, reference=False, options=options)
        rescorer = make_evaluator(job, config, kind, options)
        try:
            front = rescore_front(job, front, candidates, rescorer, list(zip(references, points, strict=True)))
        finally:
            _close(rescorer)
    sink.on_rescored(front)
    report_fp_references(sink, points)
    return replace(result, front=tuple(front))


def run_job(
    spec: JobSpec,
    sink: Any,
    resume: Any = None,
    *,
    options: DriverOptions = DriverOptions(),
    on_prepared: Callable[[PreparedJob], None] | None = None,
) -> SearchResult:
    """Run (or resume) one search job, reporting every generation to ``sink`` before anything else sees it.

    ``sink`` follows ``workers.protocol.JobSink`` (``on_generation(record)``; optional ``on_rescored(evals)`` and
    ``on_progress(activity)``); ``resume`` is a ``workers.protocol.ResumeState`` or ``None``.
    """
    from workers.protocol import GenerationRecord, report_samples, wants_samples
    from workers.samples import sample_grids

    report = ProgressReporter(sink)
    job = prepare_job(spec, options, report)
    spec = job.spec
    if on_prepared is not None:
        on_prepared(job)
    kind = options.evaluator_for(spec)
    report("searching", f"starting the search ({kind} evaluator)")
    evaluator = make_evaluator(job, evaluator_config(job, options=options), kind, options)
    try:
        runner = SearchRunner(spec.search, job.space, evaluator, job.cost_model)

        def on_generation(result: GenerationResult) -> None:
            sink.on_generation(GenerationRecord.from_result(result, runner.checkpoint().to_bytes()))
            done = result.generation + 1
            report("searching", f"generation {done}/{spec.search.generations} stored")

        known = tuple(resume.known) if resume is not None else ()
        if resume is not None and resume.checkpoint is not None:
            log.info("job %s: resuming after generation %d", getattr(sink, "job_id", "?"), resume.last_generation)
            result = runner.resume(Checkpoint.from_bytes(resume.checkpoint), on_generation, known=known)
        else:
            result = runner.run(on_generation, known=known)
    finally:
        _close(evaluator)
    if result.front:
        result = finish_front(job, result, sink, kind, options, report)
    if wants_samples(sink) and result.front:
        report("sampling", "drawing the FP and knee sample grids")
        report_samples(sink, sample_grids(job, result.front, dict(result.candidates)))
    return result
