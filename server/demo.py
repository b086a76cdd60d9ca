"""``tmpq demo``: the main job end to end on the embedded defaults.

Starts ``tmpq serve`` (SQLite under the data directory, a local Ray for the evaluations, the shipped testbed),
submits a small search through the REST API, shows its progress, prints the front and its knee point, writes the
Pareto plot, exports the knee candidate as a runnable quantized model (``GET .../candidates/{key}/export``, the call
``tmpq export`` makes) and samples from the export. Everything goes through the same client the CLI uses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import TmpqError
from server.client import ApiUnavailable, TmpqClient
from server.settings import DEFAULT_MODEL_ROOT as MODEL_ROOT

#: The demo's search: the shipped testbed, 5 or 10 steps, 4/6/8-bit blocks, a small NSGA-II run.
DEMO_JOB: dict[str, Any] = {
    "version": 2,
    "model": {"path": "digits-ddpm-16"},
    "search": {
        "bit_options": [4, 6, 8],
        "steps": [5, 10],
        "granularity": "block",
        "algorithm": "nsga2",
        "population": 12,
        "generations": 4,
        "seed": 0,
    },
    "evaluation": {"objective": "mse", "samples": 32, "reference_steps": 50, "rescore_samples": 256},
    "execution": {"ray": {"num_actors": 2, "num_cpus": 1, "threads_per_actor": 1}},
}


#: The text-to-image demo (``tmpq demo --model digits-sd``): the shipped digits-sd testbed, its ten prompts at its
#: guidance, DPM-Solver++ at 4 or 8 steps.
DEMO_T2I_JOB: dict[str, Any] = {
    "version": 2,
    "model": {"path": "digits-sd"},
    "search": {
        "bit_options": [4, 6, 8],
        "steps": [4, 8],
        "granularity": "block",
        "solver": "dpmsolver++",
        "algorithm": "nsga2",
        "population": 12,
        "generations": 3,
        "seed": 0,
    },
    "evaluation": {"objective": "mse", "samples": 20, "reference_steps": 25, "rescore_samples": 200},
    "execution": {"ray": {"num_actors": 2, "num_cpus": 1, "threads_per_actor": 1}},
}

#: The class-conditional transformer demo (``tmpq demo --model digits-dit``): the shipped DiT testbed on its ten
#: classes at its guidance, DPM-Solver++ at 4 or 8 steps, one precision unit per kind of layer in each block.
DEMO_DIT_JOB: dict[str, Any] = {
    **DEMO_T2I_JOB,
    "model": {"path": "digits-dit"},
    "search": {**DEMO_T2I_JOB["search"], "granularity": "kind"},
}

#: The demo job of each model ``tmpq demo --model`` takes.
DEMO_JOBS: dict[str, dict[str, Any]] = {
    "digits-ddpm-16": DEMO_JOB,
    "digits-sd": DEMO_T2I_JOB,
    "digits-dit": DEMO_DIT_JOB,
}


class DemoError(TmpqError):
    """The demo server did not come up."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``tmpq serve`` on a free loopback port with SQLite under ``data_dir``; returns (process, URL)."""
    port = _free_port()
    env = {**os.environ, "TMPQ_DATA_DIR": str(data_dir), "TMPQ_EVALUATOR": "ray", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("TMPQ_DATABASE_URL", "TMPQ_API_TOKEN", "TMPQ_RAY_ADDRESS"):
        env.pop(name, None)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    client = TmpqClient(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"tmpq serve exited with {proc.returncode}; see {log_path}")
        try:
            client.health()
            return proc, url
        except ApiUnavailable:
            time.sleep(0.3)
    proc.terminate()
    raise DemoError(f"tmpq serve did not answer within 60 s; see {log_path}")


def supernet_source(spec: dict[str, Any], data_dir: Path) -> str:
    """How the job's calibrated supernet will be had: from the data directory's cache, shipped with the model
    (``tmpq zoo ship-supernet``), or calibrated by this run."""
    from supernet.artifact import SHIPPED_DIR
    from supernet.identity import supernet_artifact_name
    from workers.jobspec import validate_job

    job = validate_job(spec, MODEL_ROOT)
    model = Path(job.model.path)
    name = supernet_artifact_name(
        model,
        job.search.bit_options,
        job.calibration,
        settings=job.quantization,
        condition_key=job.model.condition_key(),
    )
    if (data_dir / "supernets" / name).is_dir():
        return f"the supernet is already calibrated in {data_dir / 'supernets' / name}"
    if (model / SHIPPED_DIR / name).is_dir():
        return f"the pre-calibrated supernet shipped with the model is used: {model / SHIPPED_DIR / name}"
    return "no calibrated supernet for these settings yet: this run calibrates it first (minutes)"


@dataclass(frozen=True)
class KneeExport:
    """What :func:`export_and_sample_knee` did.

    Attributes:
        directory: the export directory.
        manifest: its manifest (candidate, objectives, sizes...).
        grid: the PNG grid of samples drawn from the export.
        psnr_db: PSNR of those samples against the FP model at 100 steps from the same noise.
        identical: whether they equal the supernet's assembled knee candidate's samples bit for bit.
        pipeline_grid: for a conditional model, the grid drawn by calling the export's diffusers pipeline with
            each prompt or class (``None`` otherwise).
        pipeline_max_diff: the largest difference between those images and tmpq's sampler's on the same noise.
        pipeline_class: the diffusers pipeline's class name (``None`` without one).
    """

    directory: Path
    manifest: dict[str, Any]
    grid: Path
    psnr_db: float
    identical: bool
    pipeline_grid: Path | None = None
    pipeline_max_diff: float | None = None
    pipeline_class: str | None = None


def export_and_sample_knee(
    client: TmpqClient,
    job: dict[str, Any],
    knee: dict[str, Any],
    out: Path,
    data_dir: Path,
    samples: int = 64,
    seed: int = 123,
) -> KneeExport:
    """Export the knee through the API into ``out/knee-export``, load it with :func:`supernet.export.load`, sample
    ``samples`` images from it, and compare them with the FP model and with the supernet's assembled knee."""
    import torch

    from search.candidate import Candidate
    from supernet.export import load
    from supernet.images import save_grid
    from supernet.metrics import psnr
    from supernet.sampling import uniform_schedule
    from workers.driver import DriverOptions, prepare_job
    from workers.jobspec import JobSpec

    directory = client.export(job["id"], knee["key"], out / "knee-export", overwrite=True)
    pipe = load(directory)
    images = pipe.sample(samples, seed=seed)
    grid = save_grid(images, out / "knee_samples.png", ncol=8)
    pipeline_grid, pipeline_diff, pipeline_class = None, None, None
    conditioning = getattr(pipe.model, "conditioning", None)
    if conditioning is not None:  # the export as the diffusers pipeline a user runs, same noise and conditions
        n = min(samples, 4 * len(conditioning.prompts))
        drawn = pipe.pipeline(**pipe.model.pipeline_inputs(n, seed), output_type="pt").images
        pipeline_grid = save_grid(drawn * 2 - 1, out / "knee_pipeline.png", ncol=len(conditioning.prompts))
        pipeline_diff = float((drawn - (images[:n] * 0.5 + 0.5)).abs().max())
        pipeline_class = type(pipe.pipeline).__name__

    os.environ["TMPQ_DATA_DIR"] = str(data_dir)  # the cache the server's runner filled
    spec = JobSpec.from_dict(job["spec"]).resolved(MODEL_ROOT)
    prepared = prepare_job(spec, DriverOptions())
    candidate = Candidate.from_dict(knee["candidate"])
    sampler = prepared.model.sampler(batch_size=64, solver=spec.search.solver)
    with torch.no_grad(), prepared.supernet.assembled(candidate):
        direct = sampler.sample(candidate.timesteps, samples, seed=seed)
    schedule = uniform_schedule(100, prepared.model.num_train_timesteps)
    with prepared.supernet.assembled(prepared.supernet.uniform(32, 32, schedule)):
        reference = sampler.sample(schedule, samples, seed=seed)
    return KneeExport(
        directory,
        pipe.manifest,
        grid,
        psnr(images, reference),
        torch.equal(images, direct),
        pipeline_grid,
        pipeline_diff,
        pipeline_class,
    )
