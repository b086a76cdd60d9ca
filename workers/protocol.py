"""What the job runner hands the search driver, and what the driver hands back.

The runner calls ``workers.driver.run_job(spec, sink, resume)`` (through :func:`server.execution.execute_job`):

- ``spec``: the job's validated :class:`~search.spec.SearchSpec`.
- ``sink``: a :class:`JobSink`. After each generation the driver calls ``sink.on_generation(record)`` with a
  :class:`GenerationRecord`; the sink stores it (one transaction: candidates, objective values, front flags,
  hypervolume, checkpoint) and only then returns. If the job was cancelled, lost its lease, or the runner is
  shutting down, ``on_generation`` raises a :class:`JobInterrupted` subclass *after* the generation was stored;
  the driver must let it propagate (clean up in ``finally``, never swallow it; a swallowed one is re-raised by the
  runner when ``run_job`` returns). The driver may also call ``sink.raise_if_interrupted()`` at any other point
  (e.g. between evaluation batches), and ``sink.on_rescored(evaluations)`` after the search to add metrics of
  already reported candidates (the final front's quantization error and its FDD at ``rescore_samples``), then
  ``sink.on_fp_references(points)`` (optional, :func:`report_fp_references`): the FP model on the front's
  schedules. While it works (loading the model, calibrating, searching, analysing, re-scoring) it may report what
  it is doing with ``sink.on_progress(activity)`` (optional: :func:`report_progress` skips a sink without it; at
  most about once a second), an :class:`Activity` dict. At the end it may hand over sample grids of the FP model and
  the front's points with ``sink.on_samples(samples)`` (optional, :func:`report_samples`; see
  :mod:`workers.samples`).
- ``resume``: ``None`` for a fresh job, else a :class:`ResumeState`: the job ran before (its runner died or was
  stopped) and ``resume.last_generation`` was the last generation stored. The driver continues from
  ``resume.checkpoint`` (bytes it produced itself) with ``resume.known`` as already-evaluated candidates, so
  nothing is evaluated twice. Re-recording a generation that is already stored is harmless (an upsert).

``run_job`` returning normally means the job SUCCEEDED; any other exception FAILS it with
``"<ExceptionType>: <message>"`` as the reason.

This module imports nothing heavy (no torch, no ray, no database): drivers may import it freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from search.candidate import Candidate
from search.errors import TmpqError
from search.evaluator import Evaluation


class JobInterrupted(TmpqError):
    """The job must stop now; raised by the sink. The driver lets it propagate to the runner."""


class JobCancelled(JobInterrupted):
    """The user cancelled the job; the runner marks it CANCELLED."""


class LeaseLost(JobInterrupted):
    """Another runner took the job over (this runner's lease expired); this runner drops it silently."""


class RunnerStopping(JobInterrupted):
    """This runner is shutting down; the job goes back to PENDING and is resumed from its last generation."""


@dataclass(frozen=True)
class GenerationRecord:
    """One generation's results, as the driver reports them.

    Attributes:
        generation: index of the generation, from 0.
        evaluations: the evaluations first made in this generation (failed ones included).
        candidates: the candidate of every key in ``evaluations`` (extra entries are ignored).
        front_keys: keys of the current Pareto front of the whole job (feasible, non-dominated); each must be an
            evaluation of this record or of an earlier stored generation.
        hypervolume: hypervolume of that front (the job's fixed normalisation).
        evaluated: evaluations so far for the whole job; ``None``: counted by the store.
        failed: failed evaluations so far; ``None``: counted by the store.
        checkpoint: opaque bytes from which the driver can resume *after* this generation; stored with it.
    """

    generation: int
    evaluations: Sequence[Evaluation]
    candidates: Mapping[str, Candidate]
    front_keys: Sequence[str]
    hypervolume: float
    evaluated: int | None = None
    failed: int | None = None
    checkpoint: bytes | None = None

    @classmethod
    def from_result(cls, result: Any, checkpoint: bytes | None = None) -> GenerationRecord:
        """From a :class:`search.runner.GenerationResult` (duck-typed: this module does not import the runner)."""
        return cls(
            generation=int(result.generation),
            evaluations=tuple(result.evaluations),
            candidates=dict(result.candidates),
            front_keys=tuple(e.key for e in result.front),
            hypervolume=float(result.hypervolume),
            evaluated=int(result.evaluated),
            failed=int(result.failed),
            checkpoint=checkpoint,
        )


@dataclass(frozen=True)
class ResumeState:
    """What the store holds of a job that ran before.

    Attributes:
        last_generation: the last stored generation (the driver continues with ``last_generation + 1``).
        checkpoint: the bytes stored with generation ``checkpoint_generation`` (``None`` if the driver never gave
            any; then it must rebuild its state from ``known``).
        checkpoint_generation: the generation the checkpoint was stored with (normally ``last_generation``).
        known: every stored (candidate, evaluation) of the job, in the order they were first stored.
        hypervolumes: the stored hypervolume history, index = generation (missing generations are NaN).
    """

    last_generation: int
    checkpoint: bytes | None
    checkpoint_generation: int | None
    known: tuple[tuple[Candidate, Evaluation], ...] = ()
    hypervolumes: tuple[float, ...] = field(default_factory=tuple)

    @property
    def next_generation(self) -> int:
        """The generation the driver runs next."""
        return self.last_generation + 1


#: The ``stage`` of an activity: what the job is doing now.
ActivityStage = Literal["loading", "calibrating", "searching", "analysing", "rescoring", "sampling"]


class CalibrationActivity(TypedDict):
    """Where the calibration of the job's supernet is (the ``calibration`` entry of an :class:`Activity`).

    Keys:
        source: ``"cache"`` (a calibrated supernet found in the cache), ``"shipped"`` (the one shipped with the
            model) or ``"calibrating"`` (being calibrated now; the other keys say where it is).
        bits: the bit-width being calibrated (e.g. 6 for W6), or None when not per bit-width.
        bit_index: 0-based position of ``bits`` among the widths this calibration does (``0..bit_count-1``;
            shown as ``bit_index + 1``: "W6 (2/3)").
        bit_count: how many bit-widths this calibration does.
        phase: what is being done, a word that reads before the step count (``supernet.progress.PHASES``:
            ``trajectories``, ``prepare``, ``ranges``, ``par-trajectories``, ``reconstruction``, ``temporal``;
            ``done`` when finished).
        round: the round of the phase (1-based, e.g. of block reconstruction), or None when it has none.
        step: steps of the phase done (``0..total``).
        total: steps of the phase.
        elapsed_s: seconds since the calibration started.
        eta_s: estimated seconds left, or None when unknown.
    """

    source: Literal["cache", "shipped", "calibrating"]
    bits: int | None
    bit_index: int
    bit_count: int
    phase: str
    round: int | None
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None


class Activity(TypedDict):
    """What a running job is doing, as the driver reports it to :meth:`JobSink.on_progress`.

    Keys:
        stage: ``"loading"``, ``"calibrating"``, ``"searching"``, ``"analysing"``, ``"rescoring"`` or
            ``"sampling"``.
        message: one line for people (shown when there is no calibration entry to show).
        calibration: a :class:`CalibrationActivity` while the stage is about the calibrated supernet, else None.

    Extra keys are allowed and kept as they are (opaque); the stored JSON is bounded (about 4 KiB: the store drops
    the extra keys, then shortens the message, of a larger one).
    """

    stage: ActivityStage
    message: str
    calibration: CalibrationActivity | None


@runtime_checkable
class JobSink(Protocol):
    """Where the driver reports a job's generations (implemented by :class:`server.runner.StoreJobSink`)."""

    @property
    def job_id(self) -> int:
        """The job's id in the store (for logging and artefact names)."""
        ...

    def on_generation(self, record: GenerationRecord) -> None:
        """Store the generation atomically, then raise a :class:`JobInterrupted` if the job must stop."""
        ...

    def on_rescored(self, evaluations: Sequence[Evaluation]) -> None:
        """Store extra metrics of already reported candidates (e.g. the final front re-scored with more samples:
        the evaluations' ``extra``; their quality and BitOps are not changed), then raise like ``on_generation``."""
        ...

    def raise_if_interrupted(self) -> None:
        """Raise a :class:`JobInterrupted` if the job was cancelled, lost or its runner is stopping."""
        ...

    def on_progress(self, activity: Mapping[str, Any]) -> None:
        """Optional: report what the job is doing now, an :class:`Activity` (stage, message, calibration progress),
        at most about once a second. A sink may leave this method out; drivers call it through
        :func:`report_progress`, which skips a sink without it.

        The server's sink stores it (``GET /jobs/{id}`` shows the last report as ``progress.activity`` until the
        next one, or until the job leaves RUNNING). Best effort: a storage hiccup is logged, never raised. Raises
        only a :class:`JobInterrupted` (the job was cancelled, lost its lease, or the runner is stopping), which the
        driver lets propagate as for ``on_generation``.
        """
        ...


def wants_samples(sink: Any) -> bool:
    """Whether ``sink`` stores sample grids (has the optional ``on_samples``): drawing them costs sampling time."""
    return callable(getattr(sink, "on_samples", None))


def report_samples(sink: Any, samples: Mapping[str, Any]) -> None:
    """``sink.on_samples(samples)`` when the sink has that optional method: ``samples["images"]`` maps a grid's
    name (``fp``, ``knee``) to PNG bytes; the other keys describe them (JSON-ready)."""
    if wants_samples(sink):
        sink.on_samples(samples)


def report_warning(sink: Any, message: str) -> None:
    """``sink.on_warning(message)`` when the sink has that optional method: one line the job warns about and goes
    on anyway (a prompt truncated to the text encoder's length). Unlike an activity report it is kept: the server
    stores it with the job (``GET /jobs/{id}``: ``warnings``), ``tmpq search`` writes it to ``warnings.txt``."""
    on_warning = getattr(sink, "on_warning", None)
    if on_warning is not None:
        on_warning(message)


def report_calibration(sink: Any, summary: Mapping[str, Any]) -> None:
    """``sink.on_calibration(summary)`` when the sink has that optional method: what the job's calibrated supernet
    is and how good it came out (``workers.driver.calibration_summary``). The server stores it with the job
    (``GET /jobs/{id}``: ``calibration``); ``tmpq search`` writes it to ``calibration.json``."""
    on_calibration = getattr(sink, "on_calibration", None)
    if on_calibration is not None:
        on_calibration(summary)


def report_fp_references(sink: Any, points: Sequence[Mapping[str, Any]]) -> None:
    """``sink.on_fp_references(points)`` when the sink has that optional method: the FP model on each schedule of
    the final front (``workers.driver.analyse_front``), the reference points that separate the error of fewer steps
    from that of fewer bits. The server stores them with the job (``GET /jobs/{id}/front``: ``fp_references``);
    ``tmpq search`` writes them into the front JSON and the plot."""
    on_fp_references = getattr(sink, "on_fp_references", None)
    if on_fp_references is not None:
        on_fp_references([dict(p) for p in points])


def report_progress(sink: Any, activity: Mapping[str, Any]) -> None:
    """``sink.on_progress(activity)`` when the sink has that optional method; nothing otherwise."""
    on_progress = getattr(sink, "on_progress", None)
    if on_progress is not None:
        on_progress(activity)
