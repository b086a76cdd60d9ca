"""Ray scaling: candidates/s of the in-process evaluator vs the Ray pool with 1 and 2 actors (1 torch thread each).

The workload is a real evaluation's compute: DDIM sampling on each candidate's schedule with a diffusers UNet
(random weights from a seed) from fixed noise, scored against a reference schedule
(``workers.ray_testing.SamplingFactory``). ``--model digits`` is the testbed's architecture (16x16, 1.1M
parameters); ``--model cifar10`` is google/ddpm-cifar10-32's (32x32, 35.7M parameters), meant for a GPU machine
(``--device cuda``), runnable on a CPU with tiny counts.

Targets on a 2-core machine: ``speedup_2_vs_1`` >= 1.7 and ``ray_overhead`` = 1 - ray_1 / in_process <= 5%.
Prints one JSON object as its last line. ``--quick`` keeps it under a minute. Ray needs a network; on a machine
that only allows loopback traffic run it in a private network namespace::

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/ray_scaling.py --quick'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# Run as a script, Python puts bench/ first on sys.path, where other benchmarks' names (bench/supernet.py) shadow
# tmpq's packages — here and, since Ray copies the script's directory to its workers' path, in the actors.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import torch

from search.candidate import Candidate
from search.evaluator import Evaluation
from workers.actor import WorkerContext, evaluate_batch
from workers.pool import RayEvaluator
from workers.ray_config import RayConfig
from workers.ray_runtime import RayRuntime
from workers.ray_testing import SamplingEvaluator, SamplingFactory, candidates_for

#: (candidates, samples per candidate, reference steps, repeats) by (model, device, quick).
PRESETS: dict[tuple[str, str, bool], tuple[int, int, int, int]] = {
    ("digits", "cpu", False): (40, 32, 20, 2),
    ("digits", "cpu", True): (12, 16, 10, 1),
    ("digits", "cuda", False): (64, 256, 50, 2),
    ("digits", "cuda", True): (16, 64, 20, 1),
    ("cifar10", "cpu", False): (8, 2, 5, 1),
    ("cifar10", "cpu", True): (4, 1, 2, 1),
    ("cifar10", "cuda", False): (32, 64, 50, 2),
    ("cifar10", "cuda", True): (8, 16, 10, 1),
}

MIB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (under 60 s)")
    parser.add_argument("--model", choices=("digits", "cifar10"), default="digits")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--candidates", type=int, help="candidates per timed run (default: preset)")
    parser.add_argument("--samples", type=int, help="images per candidate (default: preset)")
    parser.add_argument("--reference-steps", type=int, help="steps of the reference schedule (default: preset)")
    parser.add_argument("--repeats", type=int, help="timed runs per mode; the best counts (default: preset)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.5, help="with --device cuda")
    parser.add_argument("--ray-address", default=None, help="join this cluster (default: $TMPQ_RAY_ADDRESS or local)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    preset = PRESETS[(args.model, args.device, args.quick)]
    for name, value in zip(("candidates", "samples", "reference_steps", "repeats"), preset, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def timed_run(
    run: Callable[[], list[Evaluation]], count: int, cpu_seconds: Callable[[], float]
) -> tuple[float, float, list[Evaluation]]:
    """Candidates per second of one ``run``, the cores it kept busy (CPU seconds / wall seconds) and its results."""
    cpu, start = cpu_seconds(), time.perf_counter()
    evaluations = run()
    wall = time.perf_counter() - start
    return count / wall, (cpu_seconds() - cpu) / wall, evaluations


def actors_cpu(pool: RayEvaluator) -> Callable[[], float]:
    """CPU seconds used so far by the pool's actors."""
    return lambda: sum(i["cpu_s"] for i in pool.actor_infos())


def pool_config(args: argparse.Namespace, actors: int) -> RayConfig:
    """One CPU and one torch thread per actor; a local Ray gets a logical CPU more than the machine (at least 3)
    so that the 1-actor and the 2-actor pools can start together (never more than 2 actors run at once)."""
    gpus = args.gpus_per_actor if args.device == "cuda" else 0.0
    return RayConfig(
        address=args.ray_address,
        num_actors=actors,
        num_cpus=1,
        num_gpus=gpus,
        threads_per_actor=1,
        local_num_cpus=max(3, (os.cpu_count() or 1) + 1),
        object_store_bytes=100 * MIB,
    )


def memory_of(infos: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS and CUDA memory per actor, in MiB."""
    gpu = [i["gpu_max_allocated_bytes"] for i in infos if i.get("gpu_max_allocated_bytes") is not None]
    return {
        "actor_max_rss_mib": [round(i["max_rss_bytes"] / MIB) for i in infos],
        "actor_gpu_max_allocated_mib": [round(b / MIB, 1) for b in gpu] or None,
    }


def time_modes(args: argparse.Namespace, factory: SamplingFactory, cands: list[Candidate]) -> dict[str, Any]:
    """Timed runs of the in-process evaluator and of a 1-actor pool, interleaved (same conditions), then of a
    2-actor pool. All three actors start together, while the in-process evaluator is built."""
    runs: dict[str, list[tuple[float, float]]] = {"in_process": [], "ray_1": [], "ray_2": []}
    results: dict[str, list[Evaluation]] = {}

    def timed(mode: str, run: Callable[[], list[Evaluation]], cpu: Callable[[], float]) -> None:
        rate, cores, results[mode] = timed_run(run, len(cands), cpu)
        runs[mode].append((rate, cores))

    with RayEvaluator(factory, pool_config(args, 1)) as one, RayEvaluator(factory, pool_config(args, 2)) as two:
        torch.set_num_threads(1)
        local = SamplingEvaluator(factory, WorkerContext(args.device, 1))
        evaluate_batch(local, cands[:1])  # warm-up
        for pool in (one, two):
            pool.wait_ready()
            pool.evaluate(cands[:2])
        for _ in range(args.repeats):
            timed("in_process", lambda: evaluate_batch(local, cands), time.process_time)
            timed("ray_1", lambda: one.evaluate(cands), actors_cpu(one))
        for _ in range(args.repeats):
            timed("ray_2", lambda: two.evaluate(cands), actors_cpu(two))
        memory = memory_of(two.actor_infos())
    reference = [e.quality for e in results["in_process"]]
    identical = all([e.quality for e in results[m]] == reference for m in ("ray_1", "ray_2"))
    best = {m: max(r) for m, r in runs.items()}  # the fastest run of each mode, with the cores it used
    return {
        "rates": {m: b[0] for m, b in best.items()},
        "cores": {m: b[1] for m, b in best.items()},
        "runs": {m: [r for r, _ in v] for m, v in runs.items()},
        "identical": identical,
        "memory": memory,
        "params": local.params,
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    factory = SamplingFactory(args.model, args.samples, seed=0, reference_steps=args.reference_steps)
    cands = candidates_for(args.candidates, seed=0)
    with RayRuntime(pool_config(args, 1)):
        timed = time_modes(args, factory, cands)
    rates = timed["rates"]
    result = {
        "bench": "ray_scaling",
        "model": args.model,
        "device": args.device,
        "quick": args.quick,
        "unet_params": timed["params"],
        "cpus": os.cpu_count(),
        "candidates": args.candidates,
        "samples": args.samples,
        "steps": [min(c.steps for c in cands), max(c.steps for c in cands)],
        "reference_steps": args.reference_steps,
        "repeats": args.repeats,
        "in_process_cps": round(rates["in_process"], 3),
        "ray_1_actor_cps": round(rates["ray_1"], 3),
        "ray_2_actors_cps": round(rates["ray_2"], 3),
        "speedup_2_vs_1": round(rates["ray_2"] / rates["ray_1"], 3),
        "ray_overhead": round(1 - rates["ray_1"] / rates["in_process"], 4),
        "targets": {"speedup_2_vs_1": ">= 1.7", "ray_overhead": "<= 0.05"},
        "identical_to_in_process": timed["identical"],
        # CPU seconds per wall second of the evaluating processes in the counted run: below 1 (or 2) means other
        # work on the machine took the cores, not Ray.
        "cores_used": {m: round(c, 2) for m, c in timed["cores"].items()},
        "cps_per_core": {m: round(rates[m] / c, 3) for m, c in timed["cores"].items() if c > 0},
        "runs_cps": {m: [round(r, 3) for r in v] for m, v in timed["runs"].items()},
        **timed["memory"],
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other work on the machine skews all
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
