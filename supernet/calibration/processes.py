"""Bit options calibrated side by side in worker processes (``calibration.workers``).

After the once-per-supernet ``prepare`` (TCR's factors), the bit options of a supernet are independent
calibrations. At the tensor sizes of a calibration step a second torch thread buys little (1.4x on the testbed
with two cores), so several processes with a share of the threads each finish sooner than one process with all
of them. :func:`plan_workers` decides how many processes and which bit options each takes (the longest first, each
to the least loaded process, by :mod:`~supernet.calibration.estimate`'s per-option estimate); :func:`run_workers`
starts them (``spawn``), relays their progress to the parent's tracker and returns what they calibrated.

A worker loads the model from its directory (the same path, conditioning and dtype), checks that its FP
parameters are the parent's (a digest of their bytes), applies the parent's TCR factors as they are, and runs the
same per-option loop the parent runs in process (:meth:`QuantSupernet._calibrate_options`); each bit option's
weight codes, activation tables and temporal caches come back as bytes (``torch.save``) with the strategy's report
and the phase seconds. The FP block targets and DAQ's decisions are recomputed per worker (seconds on the
testbed). Float results can differ from an in-process calibration in the last bits, as any change of the thread
count makes them.

Choices of ours: the automatic mode (``workers: 0``) uses processes only on the CPU, for a model loaded from a
directory, with at least two torch threads, when the estimate says a minute or more (a worker's start, about five
seconds on the testbed, would otherwise cost more than it saves) and when the estimate with workers (each option at
the worker's thread share, timed on the model's forward at that share) is shorter than without. When a worker finds
parameters that differ from the directory's (the model was changed after loading), the automatic mode calibrates
in process instead and says so in the metadata (``workers.fallback``); an explicit ``workers`` fails.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing as mp
import queue as queue_module
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from supernet.calibration.data import CalibrationData
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError
from supernet.progress import ProgressTracker

if TYPE_CHECKING:
    from supernet.calibration.estimate import CalibrationEstimate
    from supernet.models.base import DiffusionAdapter
    from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)

#: The automatic mode starts workers only for a calibration estimated to take at least this long (seconds).
AUTO_MIN_SECONDS = 60.0
#: A worker's start (a fresh interpreter importing torch and diffusers, loading the model), in the estimate.
WORKER_START_SECONDS = 5.0
#: Seconds between checks that every worker is still alive while none reports.
POLL_SECONDS = 0.5


class ParametersDiffer(CalibrationError):
    """A worker loaded parameters that differ from the parent's (the model was changed after loading)."""


@dataclass
class OptionsOutcome:
    """What calibrating some bit options produced, besides the supernet's state.

    Attributes:
        seconds: each option's calibration seconds.
        restarts: per option (``str(bits)``), the restarts' scores and the one kept (empty without restarts).
        report: the strategy's report (each restarted option's entries from the restart kept).
        phase_seconds: seconds per option (``str(bits)``) and phase; ``None``: the caller's tracker has them.
        workers: how the options were spread over processes (``None``: in this process).
    """

    seconds: dict[int, float] = field(default_factory=dict)
    restarts: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    phase_seconds: dict[str, dict[str, float]] | None = None
    workers: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerPlan:
    """Which bit options each worker process calibrates, and with how many torch threads."""

    groups: tuple[tuple[int, ...], ...]
    threads: int
    automatic: bool
    budget: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "processes": len(self.groups),
            "threads_each": self.threads,
            "thread_budget": self.budget,
            "bit_options": [list(g) for g in self.groups],
            "automatic": self.automatic,
        }


def unavailable(model: DiffusionAdapter) -> str | None:
    """Why worker processes cannot calibrate ``model`` (``None``: they can)."""
    if model.path is None:
        return "the model was not loaded from a directory (a worker process loads it from there)"
    if model.device.type != "cpu":
        return f"worker processes calibrate on the CPU only (the model is on {model.device})"
    return None


def balance(costs: Mapping[int, float], n: int) -> tuple[tuple[int, ...], ...]:
    """``n`` groups of bit options, the most expensive first, each to the least loaded group (options ascending
    within a group, groups by their first option)."""
    groups: list[list[int]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for bits in sorted(costs, key=lambda b: (-costs[b], b)):
        i = min(range(n), key=lambda k: (loads[k], k))
        groups[i].append(bits)
        loads[i] += costs[bits]
    return tuple(sorted((tuple(sorted(g)) for g in groups if g), key=lambda g: g[0]))


def decide_workers(
    model: DiffusionAdapter,
    bit_options: Sequence[int],
    settings: CalibrationSettings,
    sequential: CalibrationEstimate,
    threads: int,
) -> WorkerPlan | None:
    """How ``bit_options`` are spread over worker processes given the in-process estimate ``sequential`` and the
    ``threads`` this process has (``None``: all in this process).

    Raises :class:`CalibrationError` when an explicit ``calibration.workers`` above 1 cannot be honoured."""
    requested = settings.workers
    if requested == 1 or len(bit_options) < 2:
        return None
    reason = unavailable(model)
    if reason is not None:
        if requested == 0:
            log.debug("calibrating in process: %s", reason)
            return None
        raise CalibrationError(f"calibration.workers = {requested}: {reason}")
    if requested == 0 and (threads < 2 or sequential.seconds < AUTO_MIN_SECONDS):
        return None
    n = min(len(bit_options), threads if requested == 0 else requested)
    groups = balance({int(b): sequential.per_bits.get(int(b), 1.0) for b in bit_options}, n)
    return WorkerPlan(groups, max(1, threads // len(groups)), requested == 0, threads)


def plan_workers(
    supernet: QuantSupernet, data: CalibrationData, estimate: CalibrationEstimate | None = None
) -> WorkerPlan | None:
    """:func:`decide_workers` for ``supernet``: ``estimate``'s plan when the caller has estimated this calibration
    already, else through :func:`~supernet.calibration.estimate.estimate_calibration` (which times the forward)."""
    from supernet.calibration.estimate import estimate_calibration

    if supernet.calib_settings.workers == 1 or len(supernet.bit_options) < 2:
        return None
    if estimate is not None:
        return estimate.plan
    model, options = supernet.model, tuple(supernet.bit_options)
    return estimate_calibration(model, options, supernet.calib_settings, timestep=data.timesteps[0]).plan


# --- parent side ------------------------------------------------------------------------------------------------
def parameters_digest(module: torch.nn.Module) -> str:
    """A digest of ``module``'s parameters (names, dtypes, shapes and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in module.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(raw: bytes) -> Any:
    return torch.load(io.BytesIO(raw), weights_only=False)


def run_workers(
    supernet: QuantSupernet, data: CalibrationData, plan: WorkerPlan, tracker: ProgressTracker, digest: str
) -> tuple[OptionsOutcome, dict[int, dict[str, Any]]]:
    """Calibrate ``plan``'s groups in worker processes; returns the merged outcome and each option's state (for
    :meth:`QuantSupernet._set_bit_state`). ``digest``: :func:`parameters_digest` of the FP denoiser before ``prepare``.

    An exception of the tracker's callback (a cancelled job) or of a worker stops every worker and propagates."""
    model = supernet.model
    reparam = supernet.reparam
    common = {
        "path": str(model.path),
        "conditioning": getattr(model, "conditioning", None),
        "dtype": model.dtype,
        "bit_options": tuple(supernet.bit_options),
        "settings": supernet.settings,
        "calib_settings": supernet.calib_settings,
        "data": data,
        "factors": dict(reparam.factors) if reparam is not None else None,
        "digest": digest,
        "threads": plan.threads,
        "thread_budget": plan.budget,
    }
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    running = ctx.Value("i", len(plan.groups))
    procs = [
        ctx.Process(
            target=worker_main,
            args=(_dump({**common, "worker": i, "group": group}), messages, running),
            name=f"tmpq-calibrate-{'-'.join(map(str, group))}",
            daemon=True,
        )
        for i, group in enumerate(plan.groups)
    ]
    index_of = {b: i for i, b in enumerate(supernet.bit_options)}
    results: dict[int, Any] = {}
    start = time.perf_counter()
    log.info("calibrating bit options %s in %d processes of %d threads", plan.groups, len(procs), plan.threads)
    try:
        for p in procs:
            p.start()
        while len(results) < len(procs):
            try:
                msg = messages.get(timeout=POLL_SECONDS)
            except queue_module.Empty:
                for i, p in enumerate(procs):
                    if i not in results and not p.is_alive():
                        raise CalibrationError(
                            f"the worker process calibrating bit options {list(plan.groups[i])} exited with code "
                            f"{p.exitcode} before it finished"
                        ) from None
                continue
            kind = msg[0]
            if kind == "result":
                results[msg[1]] = _load(msg[2])
            elif kind == "error":
                _, i, type_name, text = msg
                group = list(plan.groups[i])
                if type_name == ParametersDiffer.__name__:
                    raise ParametersDiffer(text)
                raise CalibrationError(f"calibrating bit options {group} in a worker process: {type_name}: {text}")
            else:
                _relay(tracker, msg, index_of)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
        messages.close()
    outcome = OptionsOutcome(phase_seconds={})
    states: dict[int, dict[str, Any]] = {}
    for i in range(len(procs)):
        part: OptionsOutcome = results[i]["outcome"]
        outcome.seconds.update(part.seconds)
        outcome.restarts.update(part.restarts)
        outcome.report = merge_reports(outcome.report, part.report)
        assert outcome.phase_seconds is not None and part.phase_seconds is not None
        outcome.phase_seconds.update({k: v for k, v in part.phase_seconds.items() if k != "-"})
        states.update(results[i]["states"])
    outcome.workers = {**plan.to_dict(), "seconds": round(time.perf_counter() - start, 3)}
    return outcome, states


def merge_reports(into: Mapping[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """``into`` with ``part``'s entries added: mappings are merged key by key (one entry per configuration label,
    e.g. ``reconstruction["W4A4"]``), other values kept from ``into`` when it has them."""
    out = dict(into)
    for key, value in part.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], Mapping) and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
    return out


def _relay(tracker: ProgressTracker, msg: tuple, index_of: Mapping[int, int]) -> None:
    """Replay a worker's progress message on the parent's tracker (each message selects its bit option)."""
    kind, bits = msg[0], msg[1]
    tracker.begin_bits(index_of[bits], bits)
    if kind == "plan":
        tracker.plan(msg[2])
    elif kind == "report":
        tracker.report(*msg[2:])
    elif kind == "end":
        tracker.end_bits()


# --- worker side ------------------------------------------------------------------------------------------------
class _RelayTracker(ProgressTracker):
    """A worker's tracker: keeps its own phase seconds and sends every boundary to the parent; at each boundary it
    takes an equal share of the thread budget among the workers still running (a worker left alone takes all)."""

    def __init__(self, messages: Any, bit_options: Sequence[int], running: Any, budget: int) -> None:
        super().__init__(None, bit_options)
        self._messages = messages
        self._running = running
        self._budget = budget

    def _share_threads(self) -> None:
        threads = max(1, self._budget // max(1, int(self._running.value)))
        if threads != torch.get_num_threads():
            log.debug("worker now at %d torch threads", threads)
            torch.set_num_threads(threads)

    def begin_bits(self, index: int, bits: int) -> None:
        super().begin_bits(index, bits)
        self._messages.put(("begin", bits))

    def plan(self, units: int) -> None:
        super().plan(units)
        self._messages.put(("plan", self._bits, units))

    def report(self, phase: str, step: int, total: int, round: int | None = None) -> None:
        super().report(phase, step, total, round)
        self._share_threads()
        self._messages.put(("report", self._bits, phase, step, total, round))

    def end_bits(self) -> None:
        super().end_bits()
        self._messages.put(("end", self._bits))


def worker_main(payload: bytes, messages: Any, running: Any) -> None:
    """A worker process: calibrate the payload's group of bit options and send back their states (see the module
    docstring); an exception is sent back as ``("error", worker, type name, message)``. ``running``: the shared
    count of workers still calibrating, decremented when this one is done."""
    worker = -1
    try:
        job = _load(payload)
        worker = job["worker"]
        torch.set_num_threads(job["threads"])
        try:
            states, outcome = _calibrate_group(job, messages, running)
        finally:
            with running.get_lock():
                running.value -= 1
        messages.put(("result", worker, _dump({"states": states, "outcome": outcome})))
    except BaseException as exc:  # everything goes back to the parent, which raises it
        messages.put(("error", worker, type(exc).__name__, str(exc)))


def _calibrate_group(
    job: Mapping[str, Any], messages: Any, running: Any
) -> tuple[dict[int, dict[str, Any]], OptionsOutcome]:
    from supernet.calibration.strategy import make_strategy
    from supernet.models import load_model
    from supernet.supernet import QuantSupernet

    model = load_model(job["path"], "cpu", job["conditioning"])
    if model.dtype != job["dtype"]:
        model.to(dtype=job["dtype"])
    group: tuple[int, ...] = job["group"]
    supernet = QuantSupernet.build(model, group, job["settings"], job["calib_settings"], restorable=False)
    if parameters_digest(supernet.denoiser) != job["digest"]:
        raise ParametersDiffer(
            f"the model loaded from {job['path']} has other parameters than the one being calibrated (changed after "
            "loading?): calibrate it in process (calibration.workers = 1)"
        )
    data: CalibrationData = job["data"]
    supernet._ctx.set_grid(data.timesteps)
    if job["factors"] is not None:
        supernet.reparameterize(job["factors"])
    tracker = _RelayTracker(messages, job["bit_options"], running, job["thread_budget"])
    strategy = make_strategy(job["calib_settings"])
    outcome = supernet._calibrate_options(group, strategy, data, tracker)
    outcome.phase_seconds = tracker.phase_seconds()
    return {b: supernet._bit_state(b) for b in group}, outcome
