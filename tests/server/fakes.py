"""A small deterministic search driver with the ``workers.driver.run_job`` signature, for the runner tests.

It records generations of fake evaluations through the real :class:`~workers.protocol.JobSink`, resumes from a
:class:`~workers.protocol.ResumeState` exactly like a real driver must (same result as an uninterrupted run), and
can run inside a real runner process::

    python -m tests.server.fakes runner --url sqlite:///x.db --log runs.log --delay 0.05 --lease 5
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from search.candidate import Candidate
from search.evaluator import Evaluation
from search.pareto import pareto_front
from workers.jobspec import JobSpec
from workers.protocol import GenerationRecord, JobSink, ResumeState, report_progress

SITES = ("down.0.conv", "mid.attn.qk", "up.1.conv")

#: What :func:`run_fake_job` reports with ``sink.on_progress`` before its search when given an ``activity_gate``:
#: the second of three bit-widths being calibrated, with an unknown extra key (kept as it is).
CALIBRATING = {
    "stage": "calibrating",
    "message": "W6 (2/3): reconstruction 7/12, round 1",
    "calibration": {
        "source": "calibrating",
        "bits": 6,
        "bit_index": 1,
        "bit_count": 3,
        "phase": "reconstruction",
        "round": 1,
        "step": 7,
        "total": 12,
        "elapsed_s": 80.4,
        "eta_s": 185.0,
    },
    "fake": {"note": "extra keys are opaque"},
}


def fake_candidate(seed: int, generation: int, index: int) -> Candidate:
    """A deterministic candidate (the same for the same arguments, in every process)."""
    rng = random.Random(f"{seed}:{generation}:{index}")
    steps = rng.choice([4, 6, 8, 10])
    timesteps = sorted(rng.sample(range(100), steps), reverse=True)
    return Candidate.from_maps(
        timesteps, {s: rng.choice([4, 6, 8]) for s in SITES}, {s: rng.choice([4, 6, 8]) for s in SITES}
    )


def fake_evaluation(candidate: Candidate) -> Evaluation:
    """Quality falls with bits and steps; BitOps rise with them; about one in eight fails."""
    w, a = candidate.w_map(), candidate.a_map()
    bitops = float(sum(w[s] * a[s] for s in SITES) * candidate.steps * 1e6)
    weight_bytes = float(sum(w.values()) * 1000 / 8)
    if int(candidate.key(), 16) % 8 == 0:
        return Evaluation.failure(candidate.key(), "fake evaluation failure", bitops, weight_bytes)
    quality = 10.0 / (sum(w.values()) + sum(a.values())) + 1.0 / candidate.steps
    return Evaluation(
        candidate.key(), quality, bitops, weight_bytes, {"fdd": 100 * quality, "psnr": 40 - quality, "device": "fake"}
    )


def fake_measurement(
    backend: str = "cpu-int8", *, steps: int = 8, reference_steps: int = 100, step_ms: float = 12.0
) -> dict[str, object]:
    """A run-time measurement as ``RuntimeMeasurement.to_dict()`` writes it (the layout the server stores under
    ``runtime[backend]``), with made-up but consistent figures: FP32 1.5x slower per step, sampling K steps against
    FP's ``reference_steps``, memory 0.8x and weights a quarter of FP's."""
    fp_step_ms = 1.5 * step_ms
    sample_ms, fp_sample_ms = round(steps * step_ms, 1), round(reference_steps * fp_step_ms, 1)
    peak, fp_peak = 96 * 2**20, 120 * 2**20
    return {
        "version": 1,
        "backend": backend,
        "batch_size": 64,
        "threads": 2,
        "steps": steps,
        "reference_steps": reference_steps,
        "step_ms": step_ms,
        "fp_step_ms": fp_step_ms,
        "sample_ms": sample_ms,
        "fp_sample_ms": fp_sample_ms,
        "peak_rss_bytes": peak,
        "fp_peak_rss_bytes": fp_peak,
        "weight_bytes": 2**20,
        "fp_weight_bytes": 4 * 2**20,
        "repeats": 9,
        "machine": "fake-machine",
        "measured_at": "2026-12-06T12:00:00+00:00",
        "speedup_per_step": round(fp_step_ms / step_ms, 3),
        "speedup_vs_reference": round(fp_sample_ms / sample_ms, 3),
        "memory_ratio": round(peak / fp_peak, 3),
    }


def run_fake_job(
    spec: JobSpec,
    sink: JobSink,
    resume: ResumeState | None,
    *,
    delay: float = 0.0,
    log: Path | None = None,
    fail_at: int | None = None,
    activity_gate: Path | None = None,
) -> None:
    """Run ``spec.search.generations`` generations of ``spec.search.population`` fake candidates through ``sink``.

    With ``activity_gate``, first report :data:`CALIBRATING` through ``sink.on_progress`` and wait (polling the
    interruptions) until that file exists, as a driver calibrating its supernet would.
    """
    known: dict[str, tuple[Candidate, Evaluation]] = {}
    start = 0
    if resume is not None:
        known = {c.key(): (c, e) for c, e in resume.known}
        start = json.loads(resume.checkpoint)["next"] if resume.checkpoint is not None else resume.next_generation
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"{sink.job_id} {os.getpid()} {start}\n")
    if activity_gate is not None:
        report_progress(sink, CALIBRATING)
        while not activity_gate.exists():
            sink.raise_if_interrupted()
            time.sleep(0.02)
        report_progress(sink, {"stage": "searching", "message": "starting the search", "calibration": None})
    search = spec.search
    for generation in range(start, search.generations):
        sink.raise_if_interrupted()
        if fail_at is not None and generation == fail_at:
            raise ValueError(f"boom at generation {generation}")
        new: dict[str, tuple[Candidate, Evaluation]] = {}
        for index in range(search.population):
            candidate = fake_candidate(search.seed, generation, index)
            if candidate.key() not in known and candidate.key() not in new:
                new[candidate.key()] = (candidate, fake_evaluation(candidate))
        known.update(new)
        front = pareto_front(e for _, e in known.values())
        hv = sum(1.0 / (e.quality * math.log10(e.bitops)) for e in front)
        if delay:
            time.sleep(delay)
        sink.on_generation(
            GenerationRecord(
                generation=generation,
                evaluations=[e for _, e in new.values()],
                candidates={k: c for k, (c, _) in new.items()},
                front_keys=[e.key for e in front],
                hypervolume=hv,
                checkpoint=json.dumps({"next": generation + 1}).encode(),
            )
        )
    front = pareto_front(e for _, e in known.values())
    if spec.evaluation.rescore_samples and front:  # as the real driver does: re-score the final front
        sink.on_rescored(
            [
                replace(e, extra={**e.extra, "fdd_rescored": 2 * e.extra["fdd"], "fdd_rescored_samples": 99})
                for e in front
            ]
        )


def main() -> None:
    """A real runner process (``runner``) or a real ``tmpq serve`` process (``serve``: uvicorn, API + runner) around
    :func:`run_fake_job`; both stop on SIGTERM."""
    from server.settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["runner", "serve"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-root", type=Path, default=None)
    parser.add_argument("--activity-gate", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(
        database_url=args.url,
        lease_seconds=args.lease,
        runner_concurrency=args.concurrency,
        poll_seconds=0.05,
        port=args.port,
        **({"model_root": args.model_root} if args.model_root else {}),
    )
    execute = partial(run_fake_job, delay=args.delay, log=args.log, activity_gate=args.activity_gate)
    if args.mode == "runner":
        from server.runner import run_forever

        run_forever(settings, execute=execute)
        return
    from server.app import serve

    serve(settings, execute=execute, log_level="warning")


if __name__ == "__main__":
    main()
