"""Run-time cost of exported models against the FP32 model, measured side by side (issue 17's harness).

For uniform W8A8 and a mixed candidate (block bit-widths drawn from {4, 6, 8} with seed 7) of the shipped testbed,
and (not in ``--quick``) uniform W8A8 of a supernet with symmetric weight codes (``w8a8-sym``: ``weight_symmetric``,
range-calibrated for bits {8} here, which needs no offset term on ``cpu-int8``), each exported with the available
backends, it measures in one process, interleaved, at batch 1 and 64:

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
candidate's 10 steps with the reference's from the same noise.

``headline`` (issue 17's user figure, not in ``--quick``): a latency-objective NSGA-II search of the shipped
supernet with DPM-Solver++ (:data:`HEADLINE_JOB`, in this process); its front is scored in order of predicted
latency with FDD on 1,024 samples of each candidate's deployed ``cpu-int8`` export until three pass the gate (FDD
at most 10 % above the FP model's at 100 DDIM steps, same noise); each passing one's wall time for sampling a batch
of 64 end to end is timed against the FP model's 100 steps, and ``headline_speedup_vs_fp100`` is the fastest's
ratio (null when none passes). ``missing`` says what is not measured.
Prints progress to stderr and one JSON object as the last stdout line. ``--quick`` (batch 64 only, fewer repeats,
no ``fp32-compiled``, no headline) takes a few minutes on 2 cores when Inductor's cache is cold, most of it
compiling; the headline alone (``--headline-only``) takes about 20 minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep bench/ off the import path so `supernet` is the package, not bench/supernet.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import logging
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
from supernet.runtime.latency import best_ms
from supernet.runtime.measure import TIMESTEP, peak_rss, step_times
from supernet.sampling import uniform_schedule

BACKENDS = ("reference",) if cpu_int8_unavailable(compile=True) else ("reference", CPU_INT8)
BATCHES = (1, 64)


def _log(msg: str) -> None:
    print(f"[bench/runtime] {msg}", file=sys.stderr, flush=True)


def _mixed(sn: Any, schedule: list[int]) -> Candidate:
    rng = random.Random(7)
    blocks = sorted(set(sn.site_blocks.values()))
    bits = {b: (rng.choice((4, 6, 8)), rng.choice((6, 8))) for b in blocks}
    w = {s: bits[b][0] for s, b in sn.site_blocks.items()}
    a = {s: bits[b][1] for s, b in sn.site_blocks.items()}
    return Candidate.from_maps(schedule, w, a)


def _symmetric_w8(schedule: list[int]) -> tuple[Any, Candidate]:
    """A supernet of the testbed for bits {8} with symmetric weight codes (``weight_symmetric``), range-calibrated
    (its timing does not depend on the calibration's quality), and its uniform W8A8 candidate: what a user who
    calibrates for ``cpu-int8`` gets, without the offset term asymmetric 8-bit weights need."""
    from supernet.calibration import CalibrationSettings, collect_calibration_data
    from supernet.settings import SupernetSettings
    from supernet.supernet import QuantSupernet

    model = load_model(TESTBED_DIR)
    calibration = CalibrationSettings(strategy="range")
    sn = QuantSupernet.build(model, (8,), SupernetSettings(weight_symmetric=True), calibration)
    sn.calibrate(collect_calibration_data(model, calibration))
    return sn, sn.uniform(8, 8, schedule)


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
    candidates = {"w8a8": (sn, sn.uniform(8, 8, schedule)), "mix": (sn, _mixed(sn, schedule))}
    if not quick:
        candidates["w8a8-sym"] = _symmetric_w8(schedule)
    result: dict[str, Any] = {"candidates": {k: c.bits_summary() for k, (_, c) in candidates.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        exports = {
            name: export_candidate(owner, cand, Path(tmp) / name, scheduler_config=fp.scheduler_config)
            for name, (owner, cand) in candidates.items()
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
            times, first = step_times(models, x, repeats)  # the warm-up call compiles where compiled
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
        baseline, _ = peak_rss("baseline", threads=threads)
        memory: dict[str, Any] = {"baseline_peak_rss_bytes": baseline}
        for key in models:
            if key == "fp32-compiled":
                continue
            if key == "fp32":
                peak, running = peak_rss("fp32", str(TESTBED_DIR), 64, threads=threads)
            else:
                name, backend = key.split("/")
                peak, running = peak_rss("export", str(exports[name]), 64, backend, threads)
            memory[key] = {
                "peak_rss_bytes": peak,
                "over_baseline_bytes": peak - baseline,
                "running_peak_rss_bytes": running,
                "running_over_baseline_bytes": running - baseline,
            }
            _log(f"memory {key}: peak {peak / 2**20:.1f} MiB, running {running / 2**20:.1f} MiB")
    result.update({"timings": timings, "memory": memory, "repeats": repeats, "timestep": TIMESTEP})
    return result


#: The headline's search: the shipped supernet's bits, DPM-Solver++, block genes, latency on cpu-int8 as the cost.
HEADLINE_JOB: dict[str, Any] = {
    "version": 2,
    "model": {"path": TESTBED_DIR.name},
    "search": {
        "bit_options": [4, 6, 8],
        "steps": [8, 10, 12, 14],
        "granularity": "block",
        "solver": "dpmsolver++",
        "cost": "latency",
        "algorithm": "nsga2",
        "population": 16,
        "generations": 6,
        "seed": 0,
    },
    "evaluation": {
        "objective": "mse",
        "samples": 64,
        "reference_steps": 100,
        "rescore_samples": 0,
        "latency_backend": CPU_INT8,
        "latency_batch_size": 64,
    },
}
#: A candidate passes when its FDD is at most this much above the FP model's at 100 steps (same noise).
FDD_TOLERANCE = 0.10
#: Front points scored in order of predicted latency until this many pass (or ``HEADLINE_MAX_SCORED`` were scored).
HEADLINE_PASSING = 3
HEADLINE_MAX_SCORED = 8


def _search_front(threads: int) -> tuple[Any, list[tuple[Any, Candidate]]]:
    """Run :data:`HEADLINE_JOB` in this process; ``(prepared job, [(evaluation, candidate)] of its front)``."""
    from workers.driver import DriverOptions, run_job
    from workers.jobspec import JobSpec
    from workers.local import DirectorySink

    torch.set_num_threads(threads)
    spec = JobSpec.from_dict(HEADLINE_JOB).resolved(TESTBED_DIR.parent)
    prepared: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as out:
        sink = DirectorySink(out)
        result = run_job(
            spec,
            sink,
            None,
            options=DriverOptions(evaluator="inprocess"),
            on_prepared=lambda job: prepared.setdefault("job", job),
        )
    candidates = {**sink.candidates, **dict(result.candidates)}
    return prepared["job"], [(e, candidates[e.key]) for e in result.front]


def headline(threads: int, samples: int = 1024, batch: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Issue 17's headline: among searched candidates whose FDD (``samples`` images, the deployed ``cpu-int8``
    export's own samples) is within :data:`FDD_TOLERANCE` of the FP model's at 100 DDIM steps on the same noise,
    the fastest one's wall time for sampling ``batch`` images against the FP model's at 100 steps.

    The front of a latency-objective search (:data:`HEADLINE_JOB`) is scored in order of predicted latency until
    :data:`HEADLINE_PASSING` candidates pass; each passing one is timed end to end and the fastest measured wins."""
    from supernet.metrics import FDDScorer

    start = time.perf_counter()
    job, front = _search_front(threads)
    seed = int(HEADLINE_JOB["search"]["seed"])
    search_s = time.perf_counter() - start
    _log(f"headline: searched {len(front)} front points in {search_s:.0f} s")
    torch.set_num_threads(threads)
    scorer = FDDScorer.for_testbed(job.features_path)
    fp = load_model(TESTBED_DIR)
    fp_sampler = fp.sampler(batch)
    fp100 = uniform_schedule(100, fp.num_train_timesteps)
    # one thread count throughout: a change recompiles every compiled function (dynamo guards on it), and past 8
    # graphs a function runs eagerly
    fp_fdd = scorer.score(fp_sampler.sample(fp100, samples, seed))
    noise = torch.randn(batch, *fp.sample_shape, generator=torch.Generator().manual_seed(1))
    fp100_s = best_ms(lambda: fp_sampler.denoise(noise, fp100), 1, warmup=1) / 1e3
    _log(f"headline: FP at 100 steps FDD {fp_fdd:.2f}, {fp100_s:.2f} s per batch of {batch}")
    scored: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for evaluation, candidate in sorted(front, key=lambda ec: ec[0].latency_ms)[:HEADLINE_MAX_SCORED]:
            path = export_candidate(
                job.supernet,
                candidate,
                Path(tmp) / evaluation.key,
                scheduler_config=job.model.scheduler_config,
                solver="dpmsolver++",
                backend=CPU_INT8,
            )
            pipe = load(path)
            fdd = scorer.score(pipe.sample(samples, seed, batch_size=batch))
            row: dict[str, Any] = {
                "key": evaluation.key,
                "steps": len(candidate.timesteps),
                "bits": candidate.bits_summary(),
                "predicted_ms": round(evaluation.latency_ms, 1),
                "fdd": round(fdd, 2),
                "passes": fdd <= (1 + FDD_TOLERANCE) * fp_fdd,
            }
            if row["passes"]:
                ts, sampler, fp_same = pipe.timesteps, pipe.sampler(batch), fp.sampler(batch, solver="dpmsolver++")
                wall = best_ms(lambda s=sampler, ts=ts: s.denoise(noise, ts), repeats, warmup=1) / 1e3
                steps_only = best_ms(lambda s=fp_same, ts=ts: s.denoise(noise, ts), 1, warmup=1) / 1e3
                row.update(
                    {
                        "wall_s": round(wall, 3),
                        "speedup_vs_fp100": round(fp100_s / wall, 2),
                        "fp_same_schedule_s": round(steps_only, 3),
                    }
                )
            scored.append(row)
            _log(f"headline: {row}")
            if sum(r["passes"] for r in scored) >= HEADLINE_PASSING:
                break
    passing = [r for r in scored if r["passes"]]
    best = min(passing, key=lambda r: r["wall_s"]) if passing else None
    return {
        "fp100_fdd": round(fp_fdd, 2),
        "fp100_s": round(fp100_s, 3),
        "fdd_limit": round((1 + FDD_TOLERANCE) * fp_fdd, 2),
        "samples": samples,
        "batch": batch,
        "front_size": len(front),
        "scored": scored,
        "best": best,
        "speedup_vs_fp100": best["speedup_vs_fp100"] if best else None,
        "search_s": round(search_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 64, fewer repeats, no headline (minutes: compiles)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the timed process (default 1)")
    p.add_argument("--headline-only", action="store_true", help="only the FDD-gated headline (point 5)")
    p.add_argument("--no-headline", action="store_true", help="everything but the headline (about 20 minutes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    result: dict[str, Any] = {"bench": "runtime", "quick": args.quick, "threads": args.threads}
    has_int8 = CPU_INT8 in BACKENDS
    missing = ["a CUDA backend"]
    if not has_int8:
        missing.append(f"{CPU_INT8}: {cpu_int8_unavailable(compile=True)}")
    if not args.headline_only:
        result.update(measure(args.quick, args.threads))
        timings = result["timings"]
        result.update(
            {
                "backends": list(BACKENDS),
                "speedup_w8a8_reference_b64": timings["w8a8/reference"]["b64"]["speedup"],
                "speedup_mix_reference_b64": timings["mix/reference"]["b64"]["speedup"],
                "speedup_w8a8_cpu_int8_b64": timings[f"w8a8/{CPU_INT8}"]["b64"]["speedup"] if has_int8 else None,
                "speedup_mix_cpu_int8_b64": timings[f"mix/{CPU_INT8}"]["b64"]["speedup"] if has_int8 else None,
                "speedup_w8a8_sym_cpu_int8_b64": timings.get(f"w8a8-sym/{CPU_INT8}", {}).get("b64", {}).get("speedup"),
                "speedup_fp32_compiled_b64": timings["fp32-compiled"]["b64"]["speedup"]
                if "fp32-compiled" in timings
                else None,
                "fidelity_psnr_db_min": min(result["fidelity_psnr_db"].values(), default=None),
            }
        )
    if args.quick or args.no_headline:
        missing.append("the FDD-gated headline (it searches and scores FDD on 1,024 samples: not in --quick)")
    elif has_int8:
        result["headline"] = headline(args.threads)
    result["headline_speedup_vs_fp100"] = result.get("headline", {}).get("speedup_vs_fp100")
    result.update({"missing": "; ".join(missing), "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
