"""Measuring an export through the service: ``POST /jobs/{id}/candidates/{key}/measure``, ``TmpqClient.measure``,
``tmpq measure`` and the measured column of ``tmpq front``, against a real uvicorn server in a subprocess, on the
shipped model with a small calibrated supernet in the server's cache (as ``test_export_route.py``).

One real measurement (it spawns three child processes, most of a minute on two cores): the knee, on the
``reference`` backend (no compiling) at batch 2, by the real ``tmpq measure`` console script, held back by the
measurement lock for a while first; the tests read what it printed and stored. The token guard and the 422s of a bad
query are checked in ``test_hygiene.py``, without torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from search.candidate import Candidate
from search.errors import ConfigError
from search.filelock import file_lock
from search.pareto import pareto_front
from server.cli import main
from server.client import ApiError, TmpqClient
from server.store import Store
from tests.server.cli_run import isolate_env, run_main
from tests.server.fakes import fake_measurement
from tests.server.live import API, app_server
from tests.server.test_export_route import MODEL_ROOT, finished_jobs

pytestmark = pytest.mark.slow

TOKEN = "measure-token"
#: The FP model's DDIM steps end to end (the job's evaluation.reference_steps; not the default 100).
REFERENCE_STEPS = 20
#: Seconds the test holds the measurement lock while a request waits on it.
HELD_S = 3.0


@dataclass
class Service:
    url: str
    store: Store
    data: Path
    job: int  # a SUCCEEDED job on the cached supernet
    candidates: dict[str, Candidate]
    front: list[str]
    knee: str
    orphan: int  # a job whose supernet is not in the cache


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("measure_route")
    jobs = finished_jobs(tmp, {"reference_steps": REFERENCE_STEPS})
    data, store, job = jobs.data, jobs.store, jobs.job
    front = [e.key for e in pareto_front(e for _, e in jobs.pairs)]
    try:
        with app_server(
            tmp / "server.log",
            {"TMPQ_DATA_DIR": str(data)},
            database_url=jobs.db_url,
            model_root=MODEL_ROOT,
            data_dir=data,
            api_token=TOKEN,
        ) as url:
            with TmpqClient(url) as client:
                knee = client.front(job, knee=True)["knee"]["key"]  # the front is cached now, before any measurement
            yield Service(url, store, data, job, {c.key(): c for c in jobs.candidates}, front, knee, jobs.orphan)
    finally:
        store.close()


@dataclass
class Measured:
    key: str
    cli: subprocess.CompletedProcess[str]  # what ``tmpq measure`` printed
    waited_s: float  # how long it took, the lock held for HELD_S of it
    built_while_held: bool  # whether the export was built while the test held the lock


def tmpq_command() -> list[str]:
    script = Path(sys.executable).parent / "tmpq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


@pytest.fixture(scope="module")
def measured(service: Service) -> Measured:
    """The knee measured at batch 2 by ``tmpq measure``, while the test holds the measurement lock for
    :data:`HELD_S` seconds first (the request must wait, its export unbuilt)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMPQ_") and k != "COLUMNS"}
    env.update(TMPQ_URL=service.url, TMPQ_API_TOKEN=TOKEN)
    argv = [*tmpq_command(), "measure", str(service.job), "knee", "--backend", "reference", "--batch-size", "2"]
    export_dir = service.data / "exports" / f"job-{service.job}" / service.knee
    with file_lock(service.data / "measure.lock"):
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(HELD_S)
        held = proc.poll() is None
        built_while_held = export_dir.exists()
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert held, f"the measurement did not wait for the lock: {proc.returncode} {err}"
    ran = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return Measured(service.knee, ran, time.monotonic() - started, built_while_held)


# -- the route --------------------------------------------------------------------------------------------------


def test_the_route_measures_the_export_against_fp_and_stores_it(service: Service, measured: Measured) -> None:
    from supernet.runtime.measure import RuntimeMeasurement

    assert measured.cli.returncode == 0, measured.cli.stderr
    assert not measured.built_while_held and measured.waited_s >= HELD_S, "measurements must take turns"
    runtime = service.store.get_candidate(service.job, measured.key).runtime
    assert runtime is not None and set(runtime) == {"reference"}
    m = runtime["reference"]
    assert RuntimeMeasurement.from_dict(m).to_dict() == m
    candidate = service.candidates[measured.key]
    assert (m["backend"], m["batch_size"], m["steps"]) == ("reference", 2, candidate.steps)
    assert m["reference_steps"] == REFERENCE_STEPS and m["threads"] >= 1 and m["machine"]
    for name in ("step_ms", "fp_step_ms", "sample_ms", "fp_sample_ms", "peak_rss_bytes", "fp_peak_rss_bytes"):
        assert m[name] > 0, name
    assert m["speedup_per_step"] == round(m["fp_step_ms"] / m["step_ms"], 3)
    assert m["speedup_vs_reference"] == round(m["fp_sample_ms"] / m["sample_ms"], 3)
    assert m["memory_ratio"] == round(m["peak_rss_bytes"] / m["fp_peak_rss_bytes"], 3)
    assert m["weight_bytes"] > 0 and m["fp_weight_bytes"] > 0
    # built like POST .../export builds it, and kept with the candidate: every reader shows it, the cached front too
    assert (service.data / "exports" / f"job-{service.job}" / measured.key / "manifest.json").is_file()
    with TmpqClient(service.url) as client:
        assert client.candidate(service.job, measured.key)["runtime"] == {"reference": m}
        front = client.front(service.job, knee=True)
    points = {p["key"]: p for p in front["items"]}
    assert points[measured.key]["runtime"] == front["knee"]["runtime"] == {"reference": m}
    assert all(p["runtime"] is None for k, p in points.items() if k != measured.key)


def test_the_fake_measurement_of_the_fast_tests_has_the_real_layout() -> None:
    from supernet.runtime.measure import RuntimeMeasurement

    fake = fake_measurement("cpu-int8", steps=6)
    assert RuntimeMeasurement.from_dict(fake).to_dict() == fake


def test_a_job_without_its_supernet_or_candidate_is_refused_and_nothing_is_stored(service: Service) -> None:
    key = next(iter(service.candidates))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = f"{service.url}{API}/jobs"
    params = {"backend": "reference", "batch_size": 2}
    orphan = httpx.post(f"{api}/{service.orphan}/candidates/{key}/measure", params=params, headers=auth, timeout=120)
    assert orphan.status_code == 409, orphan.text
    assert orphan.json()["detail"].startswith(f"job {service.orphan}: its calibrated supernet")
    assert service.store.get_candidate(service.orphan, key).runtime is None
    with TmpqClient(service.url, TOKEN) as client, pytest.raises(ApiError) as exc:
        client.measure(service.job, "f" * 20, backend="reference", batch_size=2)
    assert exc.value.status == 404 and "has no candidate" in exc.value.message


# -- the CLI ----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``tmpq`` in this process against the service, with its token."""
    isolate_env(monkeypatch, service.url)
    monkeypatch.setenv("TMPQ_API_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_main(capsys, argv)

    return run


def test_tmpq_measure_prints_the_measurement_and_front_shows_it(
    service: Service, measured: Measured, cli: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    job, knee = service.job, service.knee
    assert measured.cli.returncode == 0, measured.cli.stderr
    assert measured.cli.stderr.startswith("measuring on the server")
    m = service.store.get_candidate(job, knee).runtime["reference"]
    candidate = service.candidates[knee]
    mib = 1024 * 1024
    assert measured.cli.stdout.splitlines() == [
        f"measured candidate {knee} of job {job} ({candidate.bits_summary()}, K={candidate.steps}) on reference, "
        f"batch 2, {m['threads']} threads, against FP32:",
        f"  per step     {m['speedup_per_step']:.3g}x FP32 ({m['step_ms']:.4g} ms vs {m['fp_step_ms']:.4g} ms)",
        f"  end to end   {m['speedup_vs_reference']:.3g}x FP at {REFERENCE_STEPS} steps ({m['sample_ms']:.4g} ms for "
        f"K={candidate.steps} vs {m['fp_sample_ms']:.4g} ms)",
        f"  peak memory  {m['peak_rss_bytes'] / mib:.1f} MiB vs {m['fp_peak_rss_bytes'] / mib:.1f} MiB FP32 "
        f"({m['memory_ratio']:.2f}x)",
        f"  weights      {m['weight_bytes'] / mib:.1f} MiB vs {m['fp_weight_bytes'] / mib:.1f} MiB FP32 "
        f"({m['weight_bytes'] / m['fp_weight_bytes']:.2f}x)",
    ]

    table = cli("front", str(job), "--knee")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    header = next(line for line in out.splitlines() if "GBitOps" in line and "key" in line)
    assert "measured" in header, header
    assert f"measured = speed-up per step / vs FP at {REFERENCE_STEPS} steps" in " ".join(out.split())  # caption
    rows = {key: next(line for line in out.splitlines() if key in line) for key in service.front}
    for key, row in rows.items():
        runtime = service.store.get_candidate(job, key).runtime
        if runtime is None:
            assert "(reference)" not in row, row
            continue
        r = runtime["reference"]
        expected = f"{r['speedup_per_step']:.3g}x/{r['speedup_vs_reference']:.3g}x, mem {r['memory_ratio']:.2f}x"
        assert f"{expected} (reference)" in row, (expected, row)
    assert {k for k, row in rows.items() if "(reference)" in row} == {knee}
    knee_line = next(line for line in out.splitlines() if line.startswith(f"knee: {knee} "))
    assert knee_line.endswith(
        f"; measured on reference (batch 2): {m['speedup_per_step']:.3g}x per step, "
        f"{m['speedup_vs_reference']:.3g}x vs FP at {REFERENCE_STEPS} steps, memory {m['memory_ratio']:.2f}x"
    ), knee_line


def test_measure_help_and_bad_usage_exit_without_contacting_anyone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["measure", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tmpq measure") and all(f in out for f in ("--backend", "--batch-size", "--url"))
    for argv in (["--batch-size", "0"], ["--batch-size", "1025"], ["--backend", "tensorrt"]):
        with pytest.raises(SystemExit) as exc:
            main(["measure", "1", "knee", *argv, "--url", "http://127.0.0.1:9"])
        assert exc.value.code == 2 and argv[0] in capsys.readouterr().err, argv
    with TmpqClient("http://127.0.0.1:9") as client:  # nobody listens: a request would be ApiUnavailable
        for kwargs, field in (({"batch_size": 0}, "batch_size"), ({"batch_size": 2000}, "batch_size")):
            with pytest.raises(ConfigError, match=field):
                client.measure(1, "k", **kwargs)
        with pytest.raises(ConfigError, match="backend"):
            client.measure(1, "k", backend="tensorrt")


def test_measure_is_in_the_openapi_schema(service: Service) -> None:
    schema = httpx.get(f"{service.url}{API}/openapi.json", timeout=10).json()
    post = schema["paths"][f"{API}/jobs/{{job_id}}/candidates/{{key}}/measure"]["post"]
    assert post.get("security"), "measuring is guarded by the token"
    assert {"200", "404", "409", "422"} <= set(post["responses"])
    params = {p["name"]: p["schema"] for p in post["parameters"]}
    assert params["batch_size"]["minimum"] == 1 and params["batch_size"]["maximum"] == 1024
    assert params["batch_size"]["default"] == 64 and params["backend"]["default"] == "cpu-int8"
    assert "runtime" in schema["components"]["schemas"]["CandidateOut"]["properties"]
