"""A real ``uvicorn`` process serving the app on a loopback port, for tests about the server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"

#: The server process: binds a free loopback port itself (no race), prints it, then serves with no runner.
SERVER_CODE = """
import json, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(64)
print(sock.getsockname()[1], flush=True)
import uvicorn
from server.app import create_app
from server.settings import Settings
settings = Settings(**json.loads(sys.argv[1]))
uvicorn.Server(uvicorn.Config(create_app(settings, run_runner=False), log_level="warning")).run(sockets=[sock])
"""


@contextmanager
def app_server(log: Path, env: dict[str, str] | None = None, **settings: Any) -> Iterator[str]:
    """The app with ``Settings(**settings)`` (no runner) in its own process; yields its base URL once healthy.

    ``TMPQ_*`` variables of this process are not passed on; ``env`` adds variables of the server's own.
    """
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TMPQ_")}
    child_env.update({"PYTHONPATH": str(REPO), **(env or {})})
    config = json.dumps({k: str(v) for k, v in settings.items()})
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, config], cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=out
        )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().decode().strip()
        assert port.isdigit(), f"the server did not start: {log.read_text()}"
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()}"
            try:
                if httpx.get(f"{url}{API}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer: {log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
