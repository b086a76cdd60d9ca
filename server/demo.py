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
    "model": "digits-ddpm-16",
    "bit_options": [4, 6, 8],
    "steps": [5, 10],
    "granularity": "block",
    "objective": "mse",
    "samples": 32,
    "reference_steps": 50,
    "rescore_samples": 256,
    "algorithm": "nsga2",
    "population": 12,
    "generations": 4,
    "seed": 0,
    "ray": {"num_actors": 2, "num_cpus": 1, "threads_per_actor": 1},
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
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
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
    from search.spec import SearchSpec
    from supernet.artifact import SHIPPED_DIR, artifact_name
    from supernet.calibration.settings import CalibrationSettings
    from supernet.settings import SupernetSettings
    from supernet.zoo.modeldir import model_hash

    job = SearchSpec.from_dict(spec)
    model = MODEL_ROOT / job.model
    bits = sorted(b for b in job.bit_options if 2 <= b <= 8)
    name = artifact_name(model_hash(model), bits, SupernetSettings(), CalibrationSettings.from_dict(job.calibration))
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
    """

    directory: Path
    manifest: dict[str, Any]
    grid: Path
    psnr_db: float
    identical: bool


def export_and_sample_knee(client: TmpqClient, job: dict[str, Any], knee: dict[str, Any], out: Path,
                           data_dir: Path, samples: int = 64, seed: int = 123) -> KneeExport:
    """Export the knee through the API into ``out/knee-export``, load it with :func:`supernet.export.load`, sample
    ``samples`` images from it, and compare them with the FP model and with the supernet's assembled knee."""
    import torch

    from search.candidate import Candidate
    from search.spec import SearchSpec
    from supernet.export import load
    from supernet.images import save_grid
    from supernet.metrics import psnr
    from supernet.sampling import uniform_schedule
    from workers.driver import DriverOptions, prepare_job

    directory = client.export(job["id"], knee["key"], out / "knee-export", overwrite=True)
    pipe = load(directory)
    images = pipe.sample(samples, seed=seed)
    grid = save_grid(images, out / "knee_samples.png", ncol=8)

    os.environ["TMPQ_DATA_DIR"] = str(data_dir)  # the cache the server's runner filled
    model = Path(job["spec"]["model"])
    spec = SearchSpec.from_dict({**job["spec"], "model": str(model if model.is_absolute() else MODEL_ROOT / model)})
    prepared = prepare_job(spec, DriverOptions())
    candidate = Candidate.from_dict(knee["candidate"])
    sampler = prepared.model.sampler(batch_size=64)
    with torch.no_grad(), prepared.supernet.assembled(candidate):
        direct = sampler.sample(candidate.timesteps, samples, seed=seed)
    schedule = uniform_schedule(100, prepared.model.num_train_timesteps)
    with prepared.supernet.assembled(prepared.supernet.uniform(32, 32, schedule)):
        reference = sampler.sample(schedule, samples, seed=seed)
    return KneeExport(directory, pipe.manifest, grid, psnr(images, reference), torch.equal(images, direct))
