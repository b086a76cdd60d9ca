"""GPU benchmark (issue 16): objectives across devices and dtypes, fake-quant overhead, and scale on CUDA.

Sections (each a key of the JSON object printed as the last stdout line):
- ``agreement``: uniform W8A8, W6A6 and W4A4 on the shipped testbed at 10 steps, scored by the evaluator on the CPU
  (float32) and on the device in float32 (TF32 off), float32 with TF32, bfloat16 and float16; the largest relative
  difference of each against the CPU (tests state a 30 % tolerance);
- ``overhead``: sampling time of an assembled mixed candidate over the FP model's, side by side in one process, at the
  same dtype and batch (testbed at batch 1024, the CIFAR-10-sized UNet at 256; 10 steps), per dtype;
- ``scale``: a UNet2DModel of google/ddpm-cifar10-32's architecture (35.7 M parameters, random weights from seed 0)
  and the digits-sd text-to-image testbed, calibrated for bits {4, 6, 8} with the default ``tcaq``: seconds and peak
  device memory; the CIFAR supernet's bytes (``QuantSupernet.memory``, and the device memory it adds, assembled)
  against FP x (1 + options/4); evaluation throughput in candidates per minute at 256 samples and K = 10.

``--quick`` calibrates on a coarser grid with fewer samples and reconstruction steps and times fewer repeats (meant
for under two minutes on an H200). Without CUDA (and without ``--device cpu``) it prints ``{"cuda": false, ...}``
and exits 0; ``--device cpu`` runs every section on the CPU at small sizes, to check the script without a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep bench/ off the import path so `supernet` is the package, not bench/supernet.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import gc
import json
import logging
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.calibration import CalibrationSettings, collect_calibration_data
from supernet.models import DIGITS_SD_DIR, TESTBED_DIR, load_model
from supernet.models.base import DiffusionAdapter
from supernet.precision import set_tf32, torch_dtype
from supernet.sampling import uniform_schedule
from supernet.supernet import QuantSupernet
from workers.evaluator import EvaluatorConfig, InProcessEvaluator
from workers.ray_testing import build_model

BITS = (4, 6, 8)
DTYPES = ("float32", "bfloat16", "float16")


def _log(msg: str) -> None:
    print(f"[bench/gpu] {msg}", file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _allocated(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    gc.collect()
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated())


def _shipped() -> Path:
    (path,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    return path


# --- agreement -----------------------------------------------------------------------------------------------------
def bench_agreement(device: str, quick: bool) -> dict[str, Any]:
    """Uniform candidates scored on the CPU and on ``device`` in each dtype (and float32 with TF32)."""
    samples, reference_steps = (16, 20) if quick else (64, 50)
    schedule = uniform_schedule(10, 1000)
    runs = [("cpu", d, False) for d in DTYPES]
    if device != "cpu":
        runs += [(device, d, False) for d in DTYPES] + [(device, "float32", True)]
    scores: dict[str, list[float]] = {}
    for dev, dtype, tf32 in runs:
        label = f"{dev}/{dtype}" + ("+tf32" if tf32 else "")
        config = EvaluatorConfig(
            model_path=str(TESTBED_DIR),
            supernet_path=str(_shipped()),
            samples=samples,
            reference_steps=reference_steps,
            device=dev,
            dtype=dtype,
            allow_tf32=tf32,
        )
        evaluator = InProcessEvaluator.from_config(config)
        results = evaluator.evaluate([evaluator.supernet.uniform(b, b, schedule) for b in (8, 6, 4)])
        scores[label] = [round(r.quality, 6) for r in results]
        _log(f"agreement {label}: {scores[label]}")
    set_tf32(False)
    cpu = scores["cpu/float32"]
    return {
        "candidates": ["W8A8", "W6A6", "W4A4"],
        "steps": 10,
        "samples": samples,
        "mse": scores,
        "max_rel_diff_vs_cpu": {
            k: round(max(abs(a - b) / b for a, b in zip(v, cpu, strict=True)), 4) for k, v in scores.items()
        },
        "tolerance": 0.3,
    }


# --- overhead ------------------------------------------------------------------------------------------------------
def _overhead(fp: DiffusionAdapter, sn: QuantSupernet, device: str, batch: int, repeats: int) -> dict[str, Any]:
    schedule = uniform_schedule(10, fp.num_train_timesteps)
    fp_sampler, q_sampler = fp.sampler(batch), sn.model.sampler(batch)
    fp_times, q_times = [], []
    with sn.assembled(sn.random_candidate(random.Random(7), schedule)):
        for sampler in (fp_sampler, q_sampler):
            _timed(lambda s=sampler: s.sample(schedule, batch, seed=0), device)  # warm-up
        for r in range(repeats):
            order = [(fp_times, fp_sampler), (q_times, q_sampler)]
            for times, sampler in order if r % 2 == 0 else order[::-1]:
                _, dt = _timed(lambda s=sampler, r=r: s.sample(schedule, batch, seed=r), device)
                times.append(dt)
    fp_s, q_s = statistics.median(fp_times), statistics.median(q_times)
    return {"fp_s": round(fp_s, 4), "quantized_s": round(q_s, 4), "ratio": round(q_s / fp_s, 3), "batch": batch}


def bench_overhead(device: str, quick: bool, cifar: tuple[DiffusionAdapter, QuantSupernet] | None) -> dict[str, Any]:
    """FP vs fake-quant sampling time per dtype, on the testbed and (if calibrated) the CIFAR-sized model."""
    on_gpu = device.startswith("cuda")
    repeats = 3 if quick else 9
    out: dict[str, Any] = {}
    for dtype in DTYPES if on_gpu else ("float32",):
        fp = load_model(TESTBED_DIR, device=device)
        fp.to(dtype=torch_dtype(dtype))
        sn = load_supernet(_shipped(), load_model(TESTBED_DIR, device=device), restorable=False)
        sn.to(dtype=torch_dtype(dtype))
        out[f"testbed/{dtype}"] = _overhead(fp, sn, device, 1024 if on_gpu else 64, repeats)
        _log(f"overhead testbed/{dtype}: {out[f'testbed/{dtype}']}")
        if cifar is not None:
            cifar_fp, cifar_sn = cifar
            cifar_fp.to(dtype=torch_dtype(dtype))
            cifar_sn.to(dtype=torch_dtype(dtype))
            out[f"cifar10/{dtype}"] = _overhead(cifar_fp, cifar_sn, device, 256 if on_gpu else 8, repeats)
            _log(f"overhead cifar10/{dtype}: {out[f'cifar10/{dtype}']}")
            cifar_fp.to(dtype=torch.float32)
            cifar_sn.to(dtype=torch.float32)
    return {"runs": out, "steps": 10, "target_gpu": 1.3, "target_cpu_one_thread": 1.1}


# --- scale ---------------------------------------------------------------------------------------------------------
def _calibration(quick: bool, on_gpu: bool) -> CalibrationSettings:
    if not on_gpu:  # a smoke run of the script: the default strategy at the smallest sizes
        return CalibrationSettings(grid_steps=3, samples=2, recon_iters=1, recon_samples=2, recon_batch=2)
    if quick:
        return CalibrationSettings(grid_steps=8, samples=16, recon_iters=20, recon_samples=16)
    return CalibrationSettings()


def _calibrate(model: DiffusionAdapter, settings: CalibrationSettings, device: str) -> tuple[QuantSupernet, dict]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    data, data_s = _timed(lambda: collect_calibration_data(model, settings, batch_size=64), device)
    sn = QuantSupernet.build(model, BITS, calib_settings=settings, restorable=False)
    _, calib_s = _timed(lambda: sn.calibrate(data), device)
    peak = int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None
    return sn, {
        "calibration_data_s": round(data_s, 2),
        "calibration_s": round(calib_s, 2),
        "peak_device_bytes": peak,
        "settings": settings.to_dict(),
    }


def bench_scale(device: str, quick: bool) -> tuple[dict[str, Any], tuple[DiffusionAdapter, QuantSupernet]]:
    """Calibrate the CIFAR-sized UNet and digits-sd; the CIFAR supernet's memory and evaluation throughput."""
    on_gpu = device.startswith("cuda")
    settings = _calibration(quick, on_gpu)
    out: dict[str, Any] = {}
    model = build_model("cifar10", 0)
    model.to(device)
    params = sum(p.numel() for p in model.denoiser.parameters())
    before = _allocated(device)
    sn, cal = _calibrate(model, settings, device)
    out["cifar10"] = {"parameters": params, **cal}
    _log(f"cifar10 calibrated: {cal['calibration_s']} s, peak {cal['peak_device_bytes']}")
    schedule = uniform_schedule(10, model.num_train_timesteps)
    with sn.assembled(sn.random_candidate(random.Random(7), schedule)):
        memory = sn.memory().to_dict()
        after = _allocated(device)
    out["cifar10"]["memory"] = {
        **memory,
        "budget_over_fp": 1 + len(BITS) / 4,
        "device_bytes_added": None if before is None or after is None else after - before,
    }
    samples = 256 if on_gpu else 8
    config = EvaluatorConfig(
        model_path="(random cifar10-sized UNet)",
        supernet_path="(in memory)",
        samples=samples,
        reference_steps=50 if on_gpu else 10,
        batch_size=samples,
        device=device,
    )
    evaluator = InProcessEvaluator(model, sn, config)
    evaluator.reference  # noqa: B018 (computed once, outside the timed evaluations)
    n = 4 if quick or not on_gpu else 20
    rng = random.Random(0)
    space = [sorted(rng.sample(range(1000), 10), reverse=True) for _ in range(n)]
    candidates = [sn.random_candidate(random.Random(i), ts) for i, ts in enumerate(space)]
    _, seconds = _timed(lambda: evaluator.evaluate(candidates), device)
    out["cifar10"]["throughput"] = {
        "candidates_per_minute": round(60 * n / seconds, 2),
        "samples": samples,
        "steps": 10,
        "candidates": n,
    }
    _log(f"cifar10 throughput: {out['cifar10']['throughput']}")

    sd = load_model(DIGITS_SD_DIR, device=device)
    _, sd_cal = _calibrate(sd, settings, device)
    out["digits-sd"] = {"parameters": sum(p.numel() for p in sd.denoiser.parameters()), **sd_cal}
    _log(f"digits-sd calibrated: {sd_cal['calibration_s']} s")
    return out, (build_model("cifar10", 0), sn)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="coarser calibration, fewer repeats (under two minutes)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a small smoke run without a GPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result: dict[str, Any] = {"bench": "gpu", "quick": args.quick, "torch": torch.__version__}
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        result.update({"cuda": False, "reason": "torch sees no CUDA device: nothing was measured"})
        print(json.dumps(result))
        return result
    device = args.device
    result["cuda"] = device.startswith("cuda")
    result["device"] = torch.cuda.get_device_name(device) if result["cuda"] else "cpu"
    set_tf32(False)
    result["agreement"] = bench_agreement(device, args.quick)
    scale, cifar = bench_scale(device, args.quick)
    result["scale"] = scale
    cifar[0].to(device)
    result["overhead"] = bench_overhead(device, args.quick, cifar)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
