"""``tmpq demo``: the main job end to end on the embedded defaults.

Starts ``tmpq serve`` (SQLite under the data directory, a local Ray for the evaluations, the shipped testbed),
submits a small search through the REST API, shows its progress, prints the front and its knee point, writes the
Pareto plot, and samples from the knee candidate. Everything goes through the same client the CLI uses.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def sample_knee(job: dict[str, Any], knee: dict[str, Any], out: Path, data_dir: Path) -> tuple[Path, float]:
    """Sample 64 images with the knee candidate from the cached supernet; returns (grid PNG, PSNR vs FP)."""
    import torch

    from search.candidate import Candidate
    from search.spec import SearchSpec
    from supernet.images import save_grid
    from supernet.metrics import psnr
    from supernet.sampling import uniform_schedule
    from workers.driver import DriverOptions, prepare_job

    os.environ["TMPQ_DATA_DIR"] = str(data_dir)
    model = Path(job["spec"]["model"])
    spec = SearchSpec.from_dict({**job["spec"], "model": str(model if model.is_absolute() else MODEL_ROOT / model)})
    prepared = prepare_job(spec, DriverOptions())
    candidate = Candidate.from_dict(knee["candidate"])
    sampler = prepared.model.sampler(batch_size=64)
    with torch.no_grad(), prepared.supernet.assembled(candidate):
        images = sampler.sample(candidate.timesteps, 64, seed=123)
    schedule = uniform_schedule(100, prepared.model.num_train_timesteps)
    with prepared.supernet.assembled(prepared.supernet.uniform(32, 32, schedule)):
        reference = sampler.sample(schedule, 64, seed=123)
    return save_grid(images, out / "knee_samples.png", ncol=8), psnr(images, reference)
