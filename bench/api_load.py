"""Front-query load on a real uvicorn process: one job with 10,000 stored candidates, ``GET /jobs/{id}/front`` with
varied ``max_bitops`` at concurrency 32 for 20 s (5 s with ``--quick``).

The store is SQLite in a temporary directory unless ``--database-url`` names another (e.g. PostgreSQL on its socket:
``postgresql+psycopg://postgres@/test?host=/var/run/postgresql``); the benchmark's job is deleted afterwards. The
server runs in its own process (``server.app.serve``, no runner) on a free loopback port; the load comes from an
load generator: ``wrk`` (Debian's package; C, one thread, so the client takes little of this 2-core machine) when it
is on the PATH, else an httpx async client in this process (``--client`` chooses; the JSON says which ran). Prints
one JSON object as its last line: ``p50_ms``, ``p99_ms``, ``rps``, ``errors`` (target: p99 ≤ 50 ms, 0 errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

try:  # httpcore probes for sniffio on every request; without it each probe is a failed import (a sys.path scan)
    import sniffio  # noqa: F401
except ImportError:
    sys.modules["sniffio"] = None  # type: ignore[assignment]  # fail fast: httpcore then assumes asyncio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.candidate import Candidate
from search.evaluator import Evaluation
from server.models import JobState
from server.store import Store

logger = logging.getLogger("bench.api_load")

SITES = tuple(f"block{b}.{kind}" for b in range(6) for kind in ("conv1", "conv2", "attn.qk"))
BITS = (4, 5, 6, 7, 8)
STEPS = (4, 6, 8, 10, 15, 20)


def synthetic_evaluation(rng: random.Random) -> tuple[Candidate, Evaluation]:
    """A random candidate with a plausible (quality, BitOps, bytes) trade-off."""
    steps = rng.choice(STEPS)
    timesteps = sorted(rng.sample(range(1000), steps), reverse=True)
    w = {s: rng.choice(BITS) for s in SITES}
    a = {s: rng.choice(BITS) for s in SITES}
    candidate = Candidate.from_maps(timesteps, w, a)
    bitops = float(sum(w[s] * a[s] for s in SITES) * steps * 2.5e6)
    weight_bytes = float(sum(w.values()) * 4096 / 8)
    quality = sum(2.0 ** -w[s] + 2.0 ** -a[s] for s in SITES) + 2.0 / steps + rng.gauss(0, 0.01)
    extra = {"fdd": quality * 37.0, "psnr": 30.0 - 10 * math.log10(1 + quality)}
    return candidate, Evaluation(candidate.key(), quality, bitops, weight_bytes, extra)


def front_keys(evaluations: list[Evaluation]) -> list[str]:
    """Non-dominated keys in (quality, BitOps), both minimised (a sort-and-sweep, O(n log n))."""
    best = math.inf
    front = []
    for e in sorted(evaluations, key=lambda e: (e.bitops, e.quality)):
        if e.quality < best:
            front.append(e.key)
            best = e.quality
    return front


def populate(store: Store, candidates: int, per_generation: int, seed: int) -> tuple[int, list[float]]:
    """A job with ``candidates`` stored evaluations; returns its id and its front's BitOps."""
    job, _ = store.create_job(
        {
            "version": 1,
            "model": "/bench/model",
            "population": per_generation,
            "generations": math.ceil(candidates / per_generation),
            "seed": seed,
        }
    )
    owner = "bench-populate"
    assert store.claim_job(owner, 3600) is not None
    rng = random.Random(seed)
    seen: dict[str, Evaluation] = {}
    generation = 0
    while len(seen) < candidates:
        batch: dict[str, tuple[Candidate, Evaluation]] = {}
        while len(batch) < min(per_generation, candidates - len(seen)):
            c, e = synthetic_evaluation(rng)
            if c.key() not in seen:
                batch[c.key()] = (c, e)
        seen.update({k: e for k, (_, e) in batch.items()})
        keys = front_keys(list(seen.values()))
        store.record_generation(job.id, generation, list(batch.values()), keys, 0.5 + generation / 100, owner=owner)
        generation += 1
    store.finish_job(job.id, owner, JobState.SUCCEEDED)
    front = sorted(seen[k].bitops for k in front_keys(list(seen.values())))
    return job.id, front


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(database_url: str, port: int, data_dir: Path) -> subprocess.Popen:
    code = (
        "from server.app import serve\n"
        "from server.settings import Settings\n"
        f"serve(Settings(database_url={database_url!r}, data_dir={str(data_dir)!r}, host='127.0.0.1', port={port}),"
        " run_runner=False, log_level='warning')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)


def wait_until_up(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not come up")


async def load(
    base: str, job_id: int, budgets: list[float], concurrency: int, seconds: float, warmup: float
) -> tuple[list[float], int, float]:
    """``concurrency`` closed loops for ``seconds``; returns latencies (ms), errors and the measured wall time.

    Each loop has its own ``httpx.AsyncClient`` holding one keep-alive connection: httpcore's shared pool spends
    time quadratic in its size on every request, which at 32 connections dominates the measurement.
    """
    latencies: list[float] = []
    errors = 0
    max_requests = int(seconds * 20_000)  # a hard bound on every loop, whatever the clock does
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=10.0) for _ in range(concurrency)]
    url = f"/jobs/{job_id}/front"
    expected = f'{{"job_id":{job_id},'.encode()
    try:

        async def worker(index: int, until: float, record: bool) -> None:
            nonlocal errors
            client = clients[index]
            rng = random.Random(index)
            for _ in range(max_requests):
                if time.perf_counter() >= until:
                    return
                start = time.perf_counter()
                try:
                    response = await client.get(url, params={"max_bitops": rng.choice(budgets)})
                    ok = response.status_code == 200 and response.content.startswith(expected)
                except httpx.HTTPError:
                    ok = False
                if record:
                    latencies.append(1000 * (time.perf_counter() - start))
                    errors += not ok

        until = time.perf_counter() + warmup
        await asyncio.gather(*(worker(i, until, False) for i in range(concurrency)))
        begin = time.perf_counter()
        await asyncio.gather(*(worker(i, begin + seconds, True) for i in range(concurrency)))
        wall = time.perf_counter() - begin
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return latencies, errors, wall


WRK_SCRIPT = """
local budgets = {%(budgets)s}
local path = "%(path)s"
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", path .. "?max_bitops=" .. budgets[math.random(#budgets)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TMPQ-RESULT %%d %%d %%d %%d %%.1f %%.1f\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, summary.duration, latency:percentile(50), latency:percentile(99)))
end
"""


def load_wrk(
    base: str, job_id: int, budgets: list[float], concurrency: int, seconds: float, warmup: float, tmp: Path
) -> dict[str, float]:
    """``wrk`` with ``concurrency`` connections on one thread: a warm-up run, then the measured one.

    Returns ``requests``, ``errors`` (non-2xx answers and socket errors), ``wall`` (s), ``p50_ms``, ``p99_ms``.
    """
    script = tmp / "front.lua"
    script.write_text(
        WRK_SCRIPT % {"budgets": ", ".join(repr(b) for b in budgets), "path": f"/api/v1/jobs/{job_id}/front", "seed": 1}
    )
    url = base.removesuffix("/api/v1")
    out = ""
    for duration in (warmup, seconds):
        cmd = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("TMPQ-RESULT"))
    requests, status_errors, socket_errors, duration_us, p50_us, p99_us = line.split()[1:]
    return {
        "requests": int(requests),
        "errors": int(status_errors) + int(socket_errors),
        "wall": int(duration_us) / 1e6,
        "p50_ms": float(p50_us) / 1e3,
        "p99_ms": float(p99_us) / 1e3,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def server_stack() -> str:
    """What uvicorn picks with its defaults here: uvloop/httptools when installed, else asyncio/h11."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn {loop}+{http}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s of load instead of 20 (whole run under 60 s)")
    parser.add_argument("--database-url", default=None, help="store URL (default: SQLite in a temporary directory)")
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None, help="load duration (default 20, or 5 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator (auto: wrk when on the PATH, else httpx)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 20.0)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not on the PATH (Debian: apt-get install wrk)")

    with tempfile.TemporaryDirectory(prefix="tmpq-bench-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'tmpq.db'}"
        store = Store(url)
        start = time.perf_counter()
        job_id, front = populate(store, args.candidates, 1000, args.seed)
        logger.info(
            "stored %d candidates (front of %d) in %.1f s", args.candidates, len(front), time.perf_counter() - start
        )
        budgets = [front[int(q * (len(front) - 1))] for q in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)] + [front[-1] * 10]
        port = free_port()
        base = f"http://127.0.0.1:{port}/api/v1"
        proc = start_server(url, port, Path(tmp))
        try:
            wait_until_up(base, proc)
            warmup = 1.0 if args.quick else 2.0
            if client == "wrk":
                measured = load_wrk(base, job_id, budgets, args.concurrency, seconds, warmup, Path(tmp))
            else:
                latencies, errors, wall = asyncio.run(load(base, job_id, budgets, args.concurrency, seconds, warmup))
                measured = {
                    "requests": len(latencies),
                    "errors": errors,
                    "wall": wall,
                    "p50_ms": statistics.median(latencies) if latencies else None,
                    "p99_ms": percentile(latencies, 99) if latencies else None,
                }
        finally:
            proc.terminate()
            proc.wait(30)
            if args.database_url:
                store.delete_job(job_id)
            store.close()

    result = {
        "bench": "api_load",
        "database": url.split(":", 1)[0],
        "quick": args.quick,
        "candidates": args.candidates,
        "front_size": len(front),
        "concurrency": args.concurrency,
        "client": client,
        "server": server_stack(),
        "seconds": round(measured["wall"], 2),
        "requests": measured["requests"],
        "p50_ms": round(measured["p50_ms"], 2) if measured["p50_ms"] is not None else None,
        "p99_ms": round(measured["p99_ms"], 2) if measured["p99_ms"] is not None else None,
        "rps": round(measured["requests"] / measured["wall"], 1) if measured["wall"] > 0 else 0.0,
        "errors": measured["errors"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
