"""Run-time cost of exported models against the FP32 model, measured side by side (issue 17's harness).

For uniform W8A8 and a mixed candidate (block bit-widths drawn from {4, 6, 8} with seed 7) of the shipped testbed,
each exported with the available backends, it measures in one process, interleaved, at batch 1 and 64:

- ``step_ms``: one denoiser call (the work of one sampling step) of the FP32 model and of each export, median of
  the repeats; ``per_image_ms`` divides by the batch; ``speedup`` is the FP32 time over the export's;
- ``peak_rss_bytes``: the peak resident set of a fresh process that loads the model or export and runs one step
  at batch 64 (``VmHWM``; for ``cpu-int8`` it includes compiling), and the same minus a process that only imported
  torch and diffusers; ``running_peak_rss_bytes``: the peak of a second step alone (counter reset in between);
- ``first_call_s``: the first call at that batch (for ``cpu-int8`` it includes ``torch.compile``; Inductor caches
  compiled code on disk, so a second run of the bench compiles much faster);
- ``fidelity_psnr_db``: each backend's samples against the reference export's from the same noise.

Backends: ``reference`` (the fake-quant export the search evaluates) and, where this torch has oneDNN's int8
operators and a C++ compiler, ``cpu-int8`` (:mod:`supernet.runtime`: int8 conv/linear kernels, the rest compiled by
Inductor). Without ``--quick`` the FP32 model compiled with ``torch.compile`` is timed too (``fp32-compiled``), so
the share of the speed-up that compilation alone gives is visible. ``fidelity_psnr_db`` compares 64 samples at the
candidate's 10 steps with the reference's from the same noise. ``headline_speedup_vs_fp100`` stays null until a
searched, FDD-gated front feeds it; ``missing`` says what is not measured.
Prints progress to stderr and one JSON object as the last stdout line. ``--quick`` (batch 64 only, fewer repeats,
no ``fp32-compiled``) takes a few minutes on 2 cores when Inductor's cache is cold, most of it compiling.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep bench/ off the import path so `supernet` is the package, not bench/supernet.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import logging
import multiprocessing
import random
import statistics
import tempfile
import time
from typing import Any

import torch

from search.candidate import Candidate
from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.metrics import psnr
from supernet.models import TESTBED_DIR, load_model
from supernet.runtime import CPU_INT8, cpu_int8_unavailable
from supernet.sampling import uniform_schedule

BACKENDS = ("reference",) if cpu_int8_unavailable(compile=True) else ("reference", CPU_INT8)
BATCHES = (1, 64)
TIMESTEP = 500


def _log(msg: str) -> None:
    print(f"[bench/runtime] {msg}", file=sys.stderr, flush=True)


def _step(model: Any, x: torch.Tensor) -> None:
    with torch.no_grad():
        model.predict_noise(x, TIMESTEP)


def _mixed(sn: Any, schedule: list[int]) -> Candidate:
    rng = random.Random(7)
    blocks = sorted(set(sn.site_blocks.values()))
    bits = {b: (rng.choice((4, 6, 8)), rng.choice((6, 8))) for b in blocks}
    w = {s: bits[b][0] for s, b in sn.site_blocks.items()}
    a = {s: bits[b][1] for s, b in sn.site_blocks.items()}
    return Candidate.from_maps(schedule, w, a)


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _peak_child(kind: str, path: str, batch: int, out: Any, backend: str = "reference") -> None:
    """A fresh process: import, (load ``path`` as ``kind`` and run one step at ``batch``), report VmHWM; then the
    peak of a second step alone (the kernel's peak counter reset after the first, which may compile)."""
    torch.set_num_threads(1)
    if kind == "baseline":
        import diffusers  # noqa: F401 (the imports every other child pays for)

        out.put((_vm_hwm(), _vm_hwm()))
        return
    model = load_model(path) if kind == "fp32" else load(path, backend=backend).model
    x = torch.randn(batch, *model.sample_shape)
    _step(model, x)
    peak = _vm_hwm()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    _step(model, x)
    out.put((peak, _vm_hwm()))


def _peak(kind: str, path: str, batch: int, backend: str = "reference") -> tuple[int, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=(kind, path, batch, queue, backend))
    child.start()
    peak, running = queue.get(timeout=600)
    child.join()
    return int(peak), int(running)


def _compiled_fp32() -> Any:
    model = load_model(TESTBED_DIR)
    model.denoiser.forward = torch.compile(model.denoiser.forward, dynamic=False)
    return model


def measure(quick: bool, threads: int) -> dict[str, Any]:
    """Every figure of the module docstring."""
    torch.set_num_threads(threads)
    repeats = 5 if quick else 21
    fp = load_model(TESTBED_DIR)
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    sn = load_supernet(shipped, load_model(TESTBED_DIR))
    schedule = uniform_schedule(10, fp.num_train_timesteps)
    candidates = {"w8a8": sn.uniform(8, 8, schedule), "mix": _mixed(sn, schedule)}
    result: dict[str, Any] = {"candidates": {k: c.bits_summary() for k, c in candidates.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        exports = {
            name: export_candidate(sn, cand, Path(tmp) / name, scheduler_config=fp.scheduler_config)
            for name, cand in candidates.items()
        }
        pipes = {f"{n}/{b}": load(p, backend=b) for n, p in exports.items() for b in BACKENDS}
        models = {"fp32": fp, **({} if quick else {"fp32-compiled": _compiled_fp32()})}
        models.update({k: pipe.model for k, pipe in pipes.items()})
        fidelity: dict[str, float] = {}
        for name in exports:
            reference = pipes[f"{name}/reference"].sample(64, seed=0)
            for backend in BACKENDS[1:]:
                key, start = f"{name}/{backend}", time.perf_counter()
                fidelity[key] = round(psnr(pipes[key].sample(64, seed=0), reference), 2)
                _log(f"fidelity {key}: {fidelity[key]} dB ({time.perf_counter() - start:.0f} s)")
        result["fidelity_psnr_db"] = fidelity
        result["sites"] = {
            k: {v: sum(x == v for x in pipe.backend_report.values()) for v in set(pipe.backend_report.values())}
            for k, pipe in pipes.items()
            if pipe.backend_report
        }
        timings: dict[str, dict[str, Any]] = {}
        for batch in (64,) if quick else BATCHES:
            x = torch.randn(batch, *fp.sample_shape, generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {k: [] for k in models}
            first: dict[str, float] = {}
            for key, model in models.items():
                start = time.perf_counter()
                _step(model, x)  # warm-up (compiles where compiled)
                first[key] = time.perf_counter() - start
            for r in range(repeats):
                order = list(models.items())
                for key, model in order if r % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    _step(model, x)
                    times[key].append(time.perf_counter() - start)
            fp_ms = 1e3 * statistics.median(times["fp32"])
            for key, ts in times.items():
                ms = 1e3 * statistics.median(ts)
                timings.setdefault(key, {})[f"b{batch}"] = {
                    "step_ms": round(ms, 3),
                    "per_image_ms": round(ms / batch, 4),
                    "speedup": round(fp_ms / ms, 3),
                    "first_call_s": round(first[key], 2),
                }
            _log(f"batch {batch}: " + ", ".join(f"{k} {v[f'b{batch}']['step_ms']} ms" for k, v in timings.items()))
        baseline, _ = _peak("baseline", "", 1)
        memory: dict[str, Any] = {"baseline_peak_rss_bytes": baseline}
        for key in models:
            if key == "fp32-compiled":
                continue
            if key == "fp32":
                peak, running = _peak("fp32", str(TESTBED_DIR), 64)
            else:
                name, backend = key.split("/")
                peak, running = _peak("export", str(exports[name]), 64, backend)
            memory[key] = {
                "peak_rss_bytes": peak,
                "over_baseline_bytes": peak - baseline,
                "running_peak_rss_bytes": running,
                "running_over_baseline_bytes": running - baseline,
            }
            _log(f"memory {key}: peak {peak / 2**20:.1f} MiB, running {running / 2**20:.1f} MiB")
    result.update({"timings": timings, "memory": memory, "repeats": repeats, "timestep": TIMESTEP})
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (under a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the timed process (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result: dict[str, Any] = {"bench": "runtime", "quick": args.quick, "threads": args.threads}
    result.update(measure(args.quick, args.threads))
    timings = result["timings"]
    has_int8 = CPU_INT8 in BACKENDS
    result.update(
        {
            "backends": list(BACKENDS),
            "speedup_w8a8_reference_b64": timings["w8a8/reference"]["b64"]["speedup"],
            "speedup_mix_reference_b64": timings["mix/reference"]["b64"]["speedup"],
            "speedup_w8a8_cpu_int8_b64": timings[f"w8a8/{CPU_INT8}"]["b64"]["speedup"] if has_int8 else None,
            "speedup_mix_cpu_int8_b64": timings[f"mix/{CPU_INT8}"]["b64"]["speedup"] if has_int8 else None,
            "speedup_fp32_compiled_b64": timings["fp32-compiled"]["b64"]["speedup"]
            if "fp32-compiled" in timings
            else None,
            "fidelity_psnr_db_min": min(result["fidelity_psnr_db"].values(), default=None),
            "headline_speedup_vs_fp100": None,
            "missing": "the FDD-gated headline (needs a searched front); a CUDA backend"
            + ("" if has_int8 else f"; {CPU_INT8}: {cpu_int8_unavailable(compile=True)}"),
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
