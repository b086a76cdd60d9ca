"""A real ``uvicorn`` process serving the app on a free loopback port, for tests about the server over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 30.0) -> bool:
    """True once ``GET /healthz`` answers 200; False if the process exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}{API}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@contextmanager
def uvicorn_server(data_dir: Path, model_root: Path, log: Path, **env_extra: str) -> Iterator[str]:
    """``uvicorn server.app:create_app --factory`` on SQLite under ``data_dir``; yields its base URL.

    No runner is started: submitted jobs stay PENDING. ``env_extra`` adds ``TMPQ_*`` settings.
    """
    env = {**os.environ, "TMPQ_DATA_DIR": str(data_dir), "TMPQ_MODEL_ROOT": str(model_root),
           "PYTHONPATH": str(REPO), **env_extra}
    for name in ("TMPQ_DATABASE_URL", "TMPQ_API_TOKEN"):
        if name not in env_extra:
            env.pop(name, None)
    for _ in range(3):  # the port is free when chosen; another process may still take it first
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait_healthy(url, process):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"uvicorn did not start: {log.read_text()[-2000:]}")
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
