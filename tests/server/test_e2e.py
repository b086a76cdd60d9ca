"""End to end against a real ``tmpq serve`` (uvicorn + runner + the real driver) on the shipped model."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from search.pareto import non_dominated_mask

REPO = Path(__file__).resolve().parents[2]

#: A job small enough for CI: block-level genes, tiny calibration, 16 samples per candidate. The range strategy:
#: a tcaq calibration this small is worse at W8A8 than the range fit, which its range check refuses.
JOB = {
    "model": "digits-ddpm-16",
    "search": {
        "bit_options": [4, 8],
        "steps": [4, 6],
        "granularity": "block",
        "population": 6,
        "generations": 2,
        "seed": 3,
        "budget": "W8A8@5",
    },
    "calibration": {
        "strategy": "range",
        "grid_steps": 4,
        "samples": 8,
        "act_method": "minmax",
        "report_ranking": False,
    },
    "evaluation": {"samples": 16, "rescore_samples": 0, "reference_steps": 20},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tmpq_serve(data: Path, model_root: Path) -> Iterator[str]:
    """A real ``tmpq serve`` (uvicorn, the runner, the real driver with the in-process evaluator) on SQLite under
    ``data`` and models under ``model_root``; yields its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "TMPQ_DATA_DIR": str(data),
        "TMPQ_MODEL_ROOT": str(model_root),
        "TMPQ_EVALUATOR": "inprocess",
        "TMPQ_POLL_SECONDS": "0.2",
    }
    env.pop("TMPQ_DATABASE_URL", None)
    env.pop("TMPQ_API_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
            if proc.poll() is not None:
                pytest.fail(f"tmpq serve exited: {proc.stdout.read() if proc.stdout else ''}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tmpq_serve(tmp_path_factory.mktemp("e2e"), REPO / "models") as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_poll_front_candidate_cancel(server: str) -> None:
    api = f"{server}/api/v1"
    job = httpx.post(f"{api}/jobs", json=JOB, timeout=10).raise_for_status().json()
    other = (
        httpx.post(f"{api}/jobs", json={**JOB, "search": {**JOB["search"], "seed": 4}}, timeout=10)
        .raise_for_status()
        .json()
    )
    cancelled = httpx.post(f"{api}/jobs/{other['id']}/cancel", timeout=10)
    assert cancelled.status_code in (200, 202)

    deadline = time.monotonic() + 540
    state = job
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/jobs/{job['id']}", timeout=10).json()
        if state["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(1)
    assert state["state"] == "SUCCEEDED", state

    front = httpx.get(f"{api}/jobs/{job['id']}/front", timeout=10).json()
    points = front["items"]
    assert points, "the front is empty"
    rows = httpx.get(f"{api}/jobs/{job['id']}/candidates", params={"limit": 500}, timeout=10).json()["items"]
    assert len(rows) >= len(points)
    # The budget is "uniform W8A8 at 5 steps"; the W4A4 baseline at K=4 costs 4*4*4 per MAC-step, the budget 8*8*5.
    w4a4_k4 = next(r for r in rows if r["is_baseline"] and r["bits"] == "W4A4" and r["steps"] == 4)
    budget = w4a4_k4["bitops"] * (8 * 8 * 5) / (4 * 4 * 4)
    assert all(p["bitops"] <= budget * (1 + 1e-9) for p in points)
    assert all(p["non_dominated"] and p["feasible"] for p in points)
    assert non_dominated_mask([[p["quality"], p["bitops"]] for p in points]).all(), "front points dominate each other"
    assert httpx.get(f"{api}/jobs/{job['id']}/front", params={"knee": "true"}, timeout=10).json()["knee"] is not None

    key = points[0]["key"]
    one = httpx.get(f"{api}/jobs/{job['id']}/candidates/{key}", timeout=10)
    assert one.status_code == 200 and one.json()["key"] == key

    other_state = httpx.get(f"{api}/jobs/{other['id']}", timeout=10).json()
    assert other_state["state"] == "CANCELLED"

    # The knee exported over REST: GET serves only what a POST built, and the zip holds a loadable model directory.
    knee = httpx.get(f"{api}/jobs/{job['id']}/front", params={"knee": "true"}, timeout=10).json()["knee"]["key"]
    export = f"{api}/jobs/{job['id']}/candidates/{knee}/export"
    assert httpx.get(export, timeout=30).status_code == 409
    built = httpx.post(export, timeout=300)
    assert built.status_code == 200 and built.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(built.content)) as archive:
        names = archive.namelist()
    assert any(n.endswith("manifest.json") for n in names), names
    served = httpx.get(export, timeout=30)
    assert served.status_code == 200 and served.content == built.content
