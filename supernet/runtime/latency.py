"""Measure a :class:`search.latency.LatencyTable`: what each conv/linear site costs on a run-time backend.

For ``cpu-int8`` (the only backend with integer kernels so far) every site the backend can run in int8 is timed
alone, eagerly, at its real input shape (captured by a forward hook during one denoiser call) and the table's batch
size, in each kernel class: ``fp`` (a float32 convolution or matmul of the FP weights), ``int8`` (oneDNN's int8
kernel on the codes of the site's 8-bit slot, the rounding of its input to codes included), for sites whose
8-bit weights are asymmetric ``int8-offset`` (the same plus the offset term) and, for sites with widths this CPU
would saturate (one without VNNI), ``reference`` (the rounding plus float products of the codes). The rest of a step
(norms, activations, attention, which the compiled graph fuses into neighbouring loops) is not timed per site: a
whole uniform candidate (the widest whose sites all run on int8 kernels on this CPU; W8A8 where it has VNNI) is
exported, loaded on the backend (compiled) and timed, and ``base_ms`` is that measured step minus the sum of its
sites' times, so that the table reproduces the anchor exactly and prices other candidates by the differences
between classes. The anchor's time is the fastest call of several rounds a second apart: right after a compilation
(and on a shared machine) a burst of interference can last longer than one round of calls.

A table is cached as JSON under ``<cache>/latency/`` by supernet, backend, batch size and machine, so it is measured
once per (machine, backend, batch size): the anchor's compilation takes about a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from search.latency import FP_CLASS, INT8_CLASS, INT8_OFFSET_CLASS, REFERENCE_CLASS, LatencyTable
from supernet.qlayers.weighted import QConv2d, QLinear
from supernet.runtime.cpu_int8 import (
    CPU_INT8,
    StepIndex,
    _Int8Kernel,
    _why_not,
    cpu_int8_unavailable,
    int8_pairs_saturate,
    saturating_widths,
)
from supernet.settings import LATENCY_BACKENDS
from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)

assert CPU_INT8 in LATENCY_BACKENDS


def machine_id() -> str:
    """What a latency table depends on besides the model: CPU model, cores, torch threads and version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    int8 = "none" if cpu_int8_unavailable() else "int16 pairs" if int8_pairs_saturate() else "int32"
    return f"{cpu}; {os.cpu_count()} cpus; {torch.get_num_threads()} threads; torch {torch.__version__}; int8 {int8}"


def latency_unavailable(supernet: QuantSupernet) -> str | None:
    """Why a ``cpu-int8`` latency table cannot be measured for ``supernet`` here (``None``: it can)."""
    reason = cpu_int8_unavailable(compile=True)
    if reason is not None:
        return reason
    device = next(supernet.model.denoiser.parameters()).device
    return None if device.type == "cpu" else f"the model is on {device}; the backend runs on the CPU"


def best_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones, in milliseconds: on a shared
    machine interference only ever adds time, so the minimum is the stable estimate of what the work costs."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def _site_inputs(supernet: QuantSupernet, batch_size: int) -> dict[str, tuple[int, ...]]:
    """``{site: input shape}`` of every conv/linear site at ``batch_size`` (one denoiser call, FP)."""
    model = supernet.model
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for layer in model.denoiser.modules():
        if isinstance(layer, QConv2d | QLinear):

            def hook(module: Any, args: tuple[Any, ...], site: str = layer.site) -> None:
                shapes.setdefault(site, tuple(args[0].shape))

            handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), supernet.assembled(supernet.uniform(32, 32, (0,))):
            x = torch.zeros(batch_size, *model.sample_shape)
            model.predict_noise(x, 0, model.example_condition(batch_size))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _site_times(
    layer: QConv2d | QLinear, shape: tuple[int, ...], step: StepIndex, repeats: int, reference: bool
) -> dict[str, float]:
    """The site's milliseconds in each kernel class at input ``shape`` (the layer assembled at its int8 width);
    ``reference``: the site has widths this CPU runs as float products of codes (the ``reference`` class)."""
    kernel = _Int8Kernel(layer, layer.slots[layer.w_bits], step)
    x = torch.randn(shape)
    weight = layer.weight.detach().to(torch.float32)
    bias = None if layer.bias is None else layer.bias.detach().to(torch.float32)
    if isinstance(layer, QConv2d):

        def product(v: torch.Tensor) -> Any:
            return F.conv2d(v, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:

        def product(v: torch.Tensor) -> Any:
            return F.linear(v, weight, bias)

    inv, lo, hi, zero, scale = (float(v) for v in kernel.table[0])
    r = torch.clamp(torch.round(x * inv), lo, hi)

    def int8() -> Any:  # the rounding of the input to codes too: a pass over it that the FP class does not make
        q = torch.clamp(torch.round(x * inv), lo, hi).add_(zero).to(torch.uint8)
        return kernel._int8(q, scale, int(zero), x, False)

    def codes() -> Any:  # the backend's computation of a width whose int8 products would saturate (no VNNI)
        return product(torch.clamp(torch.round(x * inv), lo, hi).mul_(scale))

    times = {FP_CLASS: best_ms(lambda: product(x), repeats), INT8_CLASS: best_ms(int8, repeats)}
    if reference:
        times[REFERENCE_CLASS] = best_ms(codes, repeats)
    if kernel.offset is not None:
        offset = best_ms(lambda: kernel._offset_term(r, scale), repeats)
        times[INT8_OFFSET_CLASS] = times[INT8_CLASS] + offset
    return times


def _anchor_bits(bit_options: list[int], kernel_bits: int, reference_widths: dict[str, Any]) -> tuple[int, int]:
    """The uniform ``(w_bits, a_bits)`` to anchor on: the one whose sites run on int8 kernels most (on a CPU
    without VNNI the widest ones run as the reference), the widest among equals."""
    widths = [b for b in bit_options if b <= kernel_bits]
    pairs = [(w, a) for w in widths for a in widths]
    return min(pairs, key=lambda p: (sum(p in ws for ws in reference_widths.values()), -sum(p), -p[0]))


#: Steps of the anchor export's uniform schedule (see :func:`_anchor_ms`).
ANCHOR_STEPS = 10
#: Rounds of timed anchor calls, and the pause between them (see the module docstring).
ANCHOR_ROUNDS = 3
ANCHOR_PAUSE_S = 1.0


def _anchor_ms(supernet: QuantSupernet, bits: tuple[int, int], backend: str, batch_size: int, repeats: int) -> float:
    """Measured milliseconds of one denoiser step of uniform ``bits`` (W, A) exported and loaded on ``backend``."""
    from supernet.export import export_candidate, load
    from supernet.sampling import uniform_schedule

    model = supernet.model
    # a common schedule rather than one step: the per-timestep tables, and so the compiled graph, are those of a
    # uniform 10-step export of the same widths, which Inductor's cache can then share (the time of a step does
    # not depend on how many rows the tables have)
    schedule = tuple(uniform_schedule(ANCHOR_STEPS, model.num_train_timesteps))
    t = schedule[len(schedule) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        out = export_candidate(
            supernet, supernet.uniform(*bits, schedule), Path(tmp) / "anchor", scheduler_config=model.scheduler_config
        )
        runtime = load(out, backend=backend).model
        x = torch.randn(batch_size, *runtime.sample_shape)
        condition = runtime.example_condition(batch_size)
        rounds = []
        for r in range(ANCHOR_ROUNDS):
            if r:
                time.sleep(ANCHOR_PAUSE_S)
            rounds.append(best_ms(lambda: runtime.predict_noise(x, t, condition), repeats, warmup=3 if r == 0 else 1))
        return min(rounds)


def measure_latency_table(
    supernet: QuantSupernet, backend: str = CPU_INT8, batch_size: int = 64, repeats: int = 9
) -> LatencyTable:
    """Measure ``supernet``'s per-site latency table on ``backend`` at ``batch_size`` (see the module docstring).

    Raises:
        ValueError: a backend without integer kernels to price.
        RuntimeError: the backend cannot run here (:func:`~supernet.runtime.cpu_int8_unavailable`).
    """
    if backend not in LATENCY_BACKENDS:
        raise ValueError(f"latency tables are measured for {LATENCY_BACKENDS}, not {backend!r}")
    reason = latency_unavailable(supernet)
    if reason is not None:
        raise RuntimeError(f"{backend}: {reason}")
    kernel_bits = max(b for b in supernet.bit_options if b <= 8)
    start = time.perf_counter()
    shapes = _site_inputs(supernet, batch_size)
    site_ms: dict[str, dict[str, float]] = {}
    offset_sites: set[str] = set()
    reference_widths: dict[str, frozenset[tuple[int, int]]] = {}
    anchor = supernet.uniform(kernel_bits, kernel_bits, (0,))
    with supernet.assembled(anchor):
        layers = [m for m in supernet.model.denoiser.modules() if isinstance(m, QConv2d | QLinear)]
        step = StepIndex(layers[0]._ctx)
        for layer in layers:
            if _why_not(layer) is not None or layer.site not in shapes:
                continue
            widths = saturating_widths(layer)
            if widths:
                reference_widths[layer.site] = frozenset(widths)
            site_ms[layer.site] = _site_times(layer, shapes[layer.site], step, repeats, reference=bool(widths))
            if INT8_OFFSET_CLASS in site_ms[layer.site]:
                offset_sites.add(layer.site)
    w_bits, a_bits = _anchor_bits(list(supernet.bit_options), kernel_bits, reference_widths)
    anchor = supernet.uniform(w_bits, a_bits, (0,))
    measured = _anchor_ms(supernet, (w_bits, a_bits), backend, batch_size, repeats)
    sites_only = LatencyTable(
        backend=backend,
        batch_size=batch_size,
        machine=machine_id(),
        base_ms=0.0,
        site_ms=site_ms,
        offset_sites=frozenset(offset_sites),
        reference_widths=reference_widths,
        kernel_bits=kernel_bits,
        anchor={"candidate": f"W{w_bits}A{a_bits}", "bits": [w_bits, a_bits], "measured_ms": measured},
    )
    table = replace(sites_only, base_ms=measured - sites_only.step_ms(anchor))
    log.info(
        "latency table (%s, batch %d): %d sites priced, anchor W%dA%d %.2f ms/step (%.1f ms outside the sites), %.0f s",
        backend, batch_size, len(site_ms), w_bits, a_bits, measured, table.base_ms,
        time.perf_counter() - start,
    )  # fmt: skip
    return table


def latency_table_path(cache_dir: str | Path, supernet_name: str, backend: str, batch_size: int) -> Path:
    """Where the table of ``supernet_name`` (its artifact's name) on this machine is cached."""
    machine = hashlib.sha256(machine_id().encode()).hexdigest()[:12]
    return Path(cache_dir) / "latency" / f"{supernet_name}-{backend}-b{batch_size}-{machine}.json"


def get_or_measure_latency_table(
    supernet: QuantSupernet, cache_dir: str | Path, supernet_name: str, backend: str = CPU_INT8, batch_size: int = 64
) -> LatencyTable:
    """The cached table of ``supernet`` on this machine, measured (and cached) the first time."""
    path = latency_table_path(cache_dir, supernet_name, backend, batch_size)
    if path.exists():
        try:
            return LatencyTable.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            log.warning("re-measuring the latency table: %s is unreadable (%s)", path, exc)
    table = measure_latency_table(supernet, backend, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table.to_dict(), indent=1))
    tmp.replace(path)
    return table
