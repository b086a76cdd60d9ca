"""What an export saves at run time, measured against its FP32 model on this machine.

:func:`measure_export` loads an export on a backend and the FP32 model it came from, and measures side by side in
one process (interleaved, so load on a shared machine hits both alike):

- one denoiser call (a sampling step) of each at the same batch, the fastest of the repeats after warm-ups;
- the wall time of sampling one batch end to end: the export on its own schedule and solver, and the FP model on
  ``reference_steps`` uniform DDIM steps (what a user runs without tmpq);
- the peak resident set of a fresh process that loads each and runs one step at the batch (over a process that
  only imported torch and diffusers), and the bytes of each denoiser's parameters and buffers.

:func:`peak_rss` and :func:`step_times` are the building blocks ``bench/runtime.py`` shares.
"""

from __future__ import annotations

import datetime as _dt
import logging
import multiprocessing
import queue as queue_module
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.runtime.latency import best_ms, machine_id
from supernet.sampling import uniform_schedule

log = logging.getLogger(__name__)

#: Version of :meth:`RuntimeMeasurement.to_dict`'s layout.
MEASUREMENT_VERSION = 1
#: The timestep of the timed denoiser calls (mid-schedule; every call costs the same on a static graph).
TIMESTEP = 500
#: A child process that loads a model and runs a step is given this long before it counts as failed.
CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class RuntimeMeasurement:
    """One export's measured run time and memory against its FP32 model (all times in milliseconds).

    Attributes:
        backend: what ran the export (``reference``, ``cpu-int8``).
        batch_size / threads: the batch and torch threads of every timing.
        steps / reference_steps: the export's schedule length K, and the FP model's (uniform DDIM).
        step_ms / fp_step_ms: one denoiser call of the export and of the FP32 model, fastest of ``repeats``.
        sample_ms / fp_sample_ms: sampling one batch end to end: the export's K steps, the FP model's
            ``reference_steps``.
        peak_rss_bytes / fp_peak_rss_bytes: a fresh process's peak resident set while loading and running one step
            (compilation included for a compiled backend), over a process that only imported torch and diffusers.
        weight_bytes / fp_weight_bytes: the denoiser's parameters and buffers (every tensor counted once).
        machine: :func:`~supernet.runtime.latency.machine_id`; measured_at: ISO time (UTC).
    """

    backend: str
    batch_size: int
    threads: int
    steps: int
    reference_steps: int
    step_ms: float
    fp_step_ms: float
    sample_ms: float
    fp_sample_ms: float
    peak_rss_bytes: int
    fp_peak_rss_bytes: int
    weight_bytes: int
    fp_weight_bytes: int
    repeats: int
    machine: str
    measured_at: str

    @property
    def speedup_per_step(self) -> float:
        """FP32's step time over the export's, same batch."""
        return self.fp_step_ms / self.step_ms

    @property
    def speedup_vs_reference(self) -> float:
        """FP32 sampling at ``reference_steps`` over the export's sampling on its schedule (fewer steps × faster
        steps), both wall times measured."""
        return self.fp_sample_ms / self.sample_ms

    @property
    def memory_ratio(self) -> float:
        """The export's peak resident set over FP32's (each over the import-only baseline)."""
        return self.peak_rss_bytes / max(1, self.fp_peak_rss_bytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived ratios (ignored by :meth:`from_dict`)."""
        return {
            "version": MEASUREMENT_VERSION,
            **asdict(self),
            "speedup_per_step": round(self.speedup_per_step, 3),
            "speedup_vs_reference": round(self.speedup_vs_reference, 3),
            "memory_ratio": round(self.memory_ratio, 3),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeMeasurement:
        """Inverse of :meth:`to_dict` (ValueError on another version or a missing field)."""
        if data.get("version") != MEASUREMENT_VERSION:
            raise ValueError(f"runtime measurement version {data.get('version')!r} is not {MEASUREMENT_VERSION}")
        names = cls.__dataclass_fields__
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"runtime measurement lacks {missing}")
        return cls(**{n: data[n] for n in names})


def _tensors(obj: Any, depth: int) -> list[torch.Tensor]:
    """The tensors an object holds in its attributes (``__dict__`` or ``__slots__``), dicts, lists and tuples, down
    to ``depth`` levels of objects."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth < 0 or obj is None or isinstance(obj, str | int | float | bool | torch.nn.Module):
        return []
    if isinstance(obj, dict):
        values: list[Any] = list(obj.values())
    elif isinstance(obj, list | tuple):
        values = list(obj)
    else:
        names = list(getattr(obj, "__dict__", {})) + list(getattr(type(obj), "__slots__", ()))
        values = [getattr(obj, n, None) for n in names]
    return [t for v in values for t in _tensors(v, depth - 1)]


def denoiser_bytes(module: torch.nn.Module) -> int:
    """Bytes of the tensors a module and its submodules hold, each storage once: parameters, buffers, weight codes
    and a run-time backend's packed weights (opaque oneDNN tensors count as their elements)."""
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        extra = {k: v for k, v in vars(sub).items() if k not in ("_parameters", "_buffers", "_modules")}
        for t in [*sub._parameters.values(), *sub._buffers.values(), *_tensors(extra, 3)]:
            if t is None:
                continue
            if t.is_mkldnn:
                key, size = id(t), t.numel() * t.element_size()
            else:
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            if key not in seen:
                seen.add(key)
                total += size
    return total


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _load(kind: str, path: str, backend: str) -> Any:
    from supernet.export import load
    from supernet.models import load_model

    return load_model(path) if kind == "fp32" else load(path, backend=backend).model


def _step(model: Any, x: torch.Tensor, condition: Any) -> None:
    """One denoiser call at :data:`TIMESTEP` (a conditional model's ``condition`` made beforehand, untimed)."""
    with torch.no_grad():
        model.predict_noise(x, TIMESTEP, condition)


def _peak_child(kind: str, path: str, batch: int, backend: str, threads: int, out: Any) -> None:
    torch.set_num_threads(threads)
    if kind == "baseline":
        import diffusers  # noqa: F401 (the imports every other child pays for)

        out.put((_vm_hwm(), _vm_hwm()))
        return
    model = _load(kind, path, backend)
    x = torch.randn(batch, *model.sample_shape)
    condition = model.example_condition(batch)
    _step(model, x, condition)
    peak = _vm_hwm()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    _step(model, x, condition)
    out.put((peak, _vm_hwm()))


def peak_rss(
    kind: str, path: str = "", batch: int = 1, backend: str = "reference", threads: int = 1
) -> tuple[int, int]:
    """``(peak, running peak)`` resident bytes of a fresh (spawned) process: ``kind`` ``fp32`` loads the model
    directory ``path``, ``export`` loads the export ``path`` on ``backend``; either runs one step at ``batch``
    (peak: loading and that first step, compiling included) and a second one (running peak: that step alone).
    ``baseline`` only imports torch and diffusers. RuntimeError if the child fails."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=(kind, path, batch, backend, threads, queue))
    child.start()
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while True:
            try:
                peak, running = queue.get(timeout=1.0)
                break
            except queue_module.Empty:
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"measuring the memory of {kind} {path or ''}: the child process "
                        + ("timed out" if child.is_alive() else f"exited with {child.exitcode}")
                    ) from None
    finally:
        if child.is_alive():
            child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
    return int(peak), int(running)


def step_times(models: Mapping[str, Any], x: torch.Tensor, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """``(seconds of each timed call, seconds of the first call)`` per model: one warm-up call each (it compiles
    where compiled), then ``repeats`` rounds calling every model once, in alternating order."""
    first: dict[str, float] = {}
    conditions = {key: model.example_condition(int(x.shape[0])) for key, model in models.items()}
    for key, model in models.items():
        start = time.perf_counter()
        _step(model, x, conditions[key])
        first[key] = time.perf_counter() - start
    times: dict[str, list[float]] = {k: [] for k in models}
    order = list(models.items())
    for r in range(repeats):
        for key, model in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            _step(model, x, conditions[key])
            times[key].append(time.perf_counter() - start)
    return times, first


def measure_export(
    export_dir: str | Path,
    model_dir: str | Path,
    *,
    backend: str | None = None,
    batch_size: int = 64,
    repeats: int = 9,
    reference_steps: int = 100,
    threads: int | None = None,
    memory: bool = True,
) -> RuntimeMeasurement:
    """Measure the export at ``export_dir`` on ``backend`` (``None``: its manifest's) against the FP32 model at
    ``model_dir`` (the model the export was made from), as the module docstring says. ``threads``: torch threads
    for the timings (``None``: as set); ``memory=False`` skips the two child processes (the byte fields are 0)."""
    from supernet.export import load
    from supernet.models import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    fp = load_model(model_dir)
    pipe = load(export_dir, backend=backend)
    x = torch.randn(batch_size, *fp.sample_shape, generator=torch.Generator().manual_seed(0))
    times, _ = step_times({"fp32": fp, "export": pipe.model}, x, repeats)
    # one untimed sampling run each first: the export's solver path and any first-call work are warm
    fp_schedule = uniform_schedule(reference_steps, fp.num_train_timesteps)
    fp_sampler, sampler = fp.sampler(batch_size), pipe.sampler(batch_size)
    noise = x.clone()
    sample_ms = best_ms(lambda: sampler.denoise(noise, pipe.timesteps), 1, warmup=1)
    fp_sample_ms = best_ms(lambda: fp_sampler.denoise(noise, fp_schedule), 1, warmup=0)
    peak = fp_peak = 0
    if memory:
        baseline, _ = peak_rss("baseline", threads=torch.get_num_threads())
        used = pipe.backend
        peak = peak_rss("export", str(export_dir), batch_size, used, torch.get_num_threads())[0] - baseline
        fp_peak = peak_rss("fp32", str(model_dir), batch_size, threads=torch.get_num_threads())[0] - baseline
    result = RuntimeMeasurement(
        backend=pipe.backend,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        steps=len(pipe.timesteps),
        reference_steps=reference_steps,
        step_ms=round(1e3 * min(times["export"]), 3),
        fp_step_ms=round(1e3 * min(times["fp32"]), 3),
        sample_ms=round(sample_ms, 1),
        fp_sample_ms=round(fp_sample_ms, 1),
        peak_rss_bytes=int(peak),
        fp_peak_rss_bytes=int(fp_peak),
        weight_bytes=denoiser_bytes(pipe.denoiser),
        fp_weight_bytes=denoiser_bytes(fp.denoiser),
        repeats=repeats,
        machine=machine_id(),
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    log.info(
        "measured %s on %s at batch %d: %.2fx per step, %.1fx vs FP at %d steps, memory %.2fx",
        export_dir,
        result.backend,
        batch_size,
        result.speedup_per_step,
        result.speedup_vs_reference,
        reference_steps,
        result.memory_ratio,
    )
    return result
