"""The Python client (``server.client``) and the remote CLI commands (``tmpq submit/jobs/status/cancel/front``)
against a real uvicorn server in a subprocess, on a SQLite store in the test's tmp dir.

The server runs without a job runner, so submitted jobs stay PENDING; the tests drive jobs to their ends through
the same store (``claim_job``, ``record_generation``, ``finish_job``), as a runner would. The CLI is the real
``tmpq`` console script, run as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml

from search.candidate import Candidate
from search.errors import ConfigError
from search.evaluator import Evaluation
from search.pareto import pareto_front
from search.space import ddim_uniform_schedule
from server.cli import main
from server.client import ApiError, ApiUnavailable, ApiValidationError, TmpqClient, WaitTimeout
from server.models import JobState
from server.store import Store
from tests.server.cli_run import isolate_env, one_line, run_main
from tests.server.fakes import SITES, fake_candidate, fake_evaluation, fake_measurement
from tests.server.live import app_server
from workers.jobspec import JobSpec, upgrade_spec_dict

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL_ROOT = REPO / "models"
MODEL = MODEL_ROOT / "digits-ddpm-16"
TOKEN = "test-token-123"
OWNER = "test-runner"

#: A job file in the flat version-1 layout (``tmpq submit`` reads it and sends it in sections, version 2); the tests
#: override its fields by their flat names.
SPEC = {
    "version": 1,
    "model": "digits-ddpm-16",
    "bit_options": [4, 6, 8],
    "steps": [4, 8],
    "population": 8,
    "generations": 3,
    "samples": 16,
}


Ran = subprocess.CompletedProcess  # what a tmpq run gave: returncode, stdout, stderr


@dataclass
class Server:
    url: str
    store: Store
    tmp: Path


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client_cli")
    db_url = f"sqlite:///{tmp / 'tmpq.db'}"
    store = Store(db_url)  # migrated here, so the server starts on a ready database
    try:
        with app_server(tmp / "server.log", database_url=db_url, model_root=MODEL_ROOT, api_token=TOKEN) as url:
            yield Server(url, store, tmp)
    finally:
        store.close()


def tmpq_command() -> list[str]:
    script = Path(sys.executable).parent / "tmpq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def cli_env(server: Server, *, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMPQ_") and k != "COLUMNS"}  # piped: 160 wide
    env["TMPQ_URL"] = server.url
    if token is not None:
        env["TMPQ_API_TOKEN"] = token
    return env


def tmpq(server: Server, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """Run the real ``tmpq`` console script against the server."""
    return subprocess.run(
        [*tmpq_command(), *args],
        env=cli_env(server, token=token),
        cwd=server.tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tmpq_background(server: Server, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*tmpq_command(), *args],
        env=cli_env(server),
        cwd=server.tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def cli(server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """``tmpq`` in this process (``server.cli.main``), for the checks beyond the console-script ones."""
    isolate_env(monkeypatch, server.url)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(server.tmp)

    def run(*argv: str, token: str | None = TOKEN) -> Ran:
        if token is None:
            monkeypatch.delenv("TMPQ_API_TOKEN", raising=False)
        else:
            monkeypatch.setenv("TMPQ_API_TOKEN", token)
        return run_main(capsys, argv)

    return run


def write_spec(server: Server, name: str, **overrides: object) -> Path:
    path = server.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **overrides}))
    return path


def job_id_of(stdout: str) -> int:
    match = re.search(r"job (\d+) submitted", stdout)
    assert match, stdout
    return int(match.group(1))


def new_job(server: Server, **overrides: object) -> int:
    spec = JobSpec.from_dict({**SPEC, "model": str(MODEL), **overrides}).to_dict()
    return server.store.create_job(spec)[0].id


def job_by_submission(server: Server, submission_id: str) -> int:
    def find() -> int | None:
        jobs = server.store.list_jobs(limit=500).items
        return next((j.id for j in jobs if j.submission_id == submission_id), None)

    return int(wait_for(find, 20, f"job {submission_id}"))  # type: ignore[arg-type]


def claim(store: Store, job_id: int) -> None:
    """Make ``job_id`` RUNNING under OWNER as a runner would, leaving the other PENDING jobs PENDING."""
    others = []
    while (job := store.claim_job(OWNER, 60)) is not None and job.id != job_id:
        others.append(job.id)
    assert job is not None, f"job {job_id} is not claimable"
    for other in others:
        store.release_job(other, OWNER)


def generation(gen: int, n: int = 10) -> list[tuple[Candidate, Evaluation]]:
    pairs = {}
    for i in range(n):
        c = fake_candidate(7, gen, i)
        pairs[c.key()] = (c, fake_evaluation(c))
    return list(pairs.values())


def baseline_pair() -> tuple[Candidate, Evaluation]:
    """Uniform W8A8 on DDIM's uniform K=4 schedule of T=1000: a baseline, and the best quality (on the front)."""
    c = Candidate.from_maps(list(ddim_uniform_schedule(4, 1000)), dict.fromkeys(SITES, 8), dict.fromkeys(SITES, 8))
    return c, Evaluation(c.key(), 0.001, 1e12, 3000.0, {"psnr": 48.0})


def record(store: Store, job_id: int, gen: int, pairs: list, known: list) -> list:
    known = known + pairs
    front = pareto_front(e for _, e in known)
    store.record_generation(job_id, gen, pairs, [e.key for e in front], 0.1 * (gen + 1), owner=OWNER)
    return known


@pytest.fixture(scope="module")
def finished_job(server: Server) -> tuple[int, list[Evaluation]]:
    """A SUCCEEDED job with two generations, a uniform baseline on its front and a re-scored FDD; its front."""
    store = server.store
    job_id = new_job(server, rescore_samples=64)
    claim(store, job_id)
    known = record(store, job_id, 0, [*generation(0), baseline_pair()], [])
    known = record(store, job_id, 1, generation(1), known)
    front = pareto_front(e for _, e in known)
    store.record_rescored(
        job_id, [replace(e, extra={**e.extra, "fdd_rescored": 2.0 * e.quality}) for e in front], owner=OWNER
    )
    store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
    return job_id, front


# -- help and usage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "jobs", "status", "cancel", "front"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tmpq {command}") and "--url" in out and "--token" in out


def test_bad_flag_values_exit_2_without_contacting_anyone(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["front", "1", "--max-bitops", "lots"],
        ["front", "1", "--max-bitops", "-5"],
        ["status", "x"],
        ["jobs", "--state", "DONE"],
        ["jobs", "--limit", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--url", "http://127.0.0.1:9"])
        assert exc.value.code == 2, argv
        assert "error: argument" in capsys.readouterr().err
    assert main(["jobs", "--url", "ftp://example.org"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "tmpq: error: url: expected an http:// or https:// URL, got 'ftp://example.org'"
    )


# -- submit -------------------------------------------------------------------------------------------------


def test_submit_prints_the_job_id_and_sends_the_spec_as_written(server: Server) -> None:
    path = write_spec(server, "ok", output="out/local-only", budget="W6A6@8")
    result = tmpq(server, "submit", str(path))
    assert result.returncode == 0, result.stderr
    job = server.store.get_job(job_id_of(result.stdout))
    assert job.state is JobState.PENDING
    assert job.spec["version"] == 2  # sent in sections
    assert job.spec["model"]["path"] == str(MODEL.resolve()) and job.spec["search"]["budget"] == "W6A6@8"
    assert job.spec["search"]["population"] == 8 and "output" not in job.spec  # the local-only field is not sent


def test_repeated_submission_id_returns_the_same_job(server: Server, cli: Callable[..., Ran]) -> None:
    path = write_spec(server, "idem", seed=11)
    first = tmpq(server, "submit", str(path), "--submission-id", "idem-1", "--json")
    second = tmpq(server, "submit", str(path), "--submission-id", "idem-1", "--json")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout)["id"] == json.loads(second.stdout)["id"]
    assert json.loads(second.stdout)["submission_id"] == "idem-1"
    other = cli("submit", str(write_spec(server, "idem2", seed=12)), "--submission-id", "idem-1")
    assert other.returncode == 1
    assert "idem-1" in one_line(other.stderr) and "another spec" in other.stderr


def test_a_bad_field_exits_2_with_one_line_naming_it_before_sending(server: Server) -> None:
    before = server.store.list_jobs().total
    result = tmpq(server, "submit", str(write_spec(server, "bad", population=1)))
    assert result.returncode == 2
    assert one_line(result.stderr) == "tmpq: error: search.population: must be in [2, 1000], got 1"
    assert result.stdout == "" and server.store.list_jobs().total == before


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"grouping": "zigzag"}, "tmpq: error: search.grouping: must be one of"),  # locally
        ({"colour": "blue"}, "tmpq: error: colour: unknown field"),  # locally
        ({"steps": [4, 2000]}, "tmpq: error: search.steps: K=2000 is larger than the model's 1000 timesteps"),
        ({"model": "/etc"}, "tmpq: error: model: /etc"),  # the server's 400
    ],
)
def test_bad_fields_found_locally_or_by_the_server_exit_2(
    server: Server, cli: Callable[..., Ran], overrides: dict, expected: str
) -> None:
    before = server.store.list_jobs().total
    result = cli("submit", str(write_spec(server, "bad", **overrides)))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(expected), result.stderr
    assert result.stdout == "" and server.store.list_jobs().total == before


def test_an_unreadable_job_file_exits_2(server: Server, cli: Callable[..., Ran]) -> None:
    result = cli("submit", str(server.tmp / "missing.yaml"))
    assert result.returncode == 2 and one_line(result.stderr).startswith("tmpq: error: spec: cannot read")
    nan = server.tmp / "nan.yaml"  # a value JSON cannot carry never reaches the server
    nan.write_text(yaml.safe_dump({**SPEC, "calibration": {"tcr_alpha": float("nan")}}))
    result = cli("submit", str(nan))
    assert result.returncode == 2 and one_line(result.stderr).startswith("tmpq: error: calibration.tcr_alpha: ")


# -- jobs, status, cancel -----------------------------------------------------------------------------------


def test_jobs_lists_and_filters_by_state(
    server: Server, cli: Callable[..., Ran], finished_job: tuple[int, list]
) -> None:
    pending = new_job(server, seed=21)
    result = tmpq(server, "jobs", "--state", "pending", "--json")
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    assert pending in [j["id"] for j in page["items"]] and {j["state"] for j in page["items"]} == {"PENDING"}
    table = cli("jobs", "--limit", "500")
    assert table.returncode == 0, table.stderr
    assert "jobs (newest first)" in table.stdout and "digits-ddpm-16" in table.stdout
    row = next(line for line in table.stdout.splitlines() if re.match(rf"\W*{finished_job[0]}\W", line))
    assert "SUCCEEDED" in row and "2/3" in row  # two of its three generations stored
    too_many = cli("jobs", "--limit", "501")  # the server's 422 on a query parameter
    assert too_many.returncode == 2 and one_line(too_many.stderr).startswith("tmpq: error: limit: ")


def test_status_shows_a_job_and_a_missing_one_fails(server: Server, cli: Callable[..., Ran]) -> None:
    job_id = new_job(server, seed=31)
    result = tmpq(server, "status", str(job_id))
    assert result.returncode == 0, result.stderr
    assert "PENDING" in result.stdout and str(MODEL) in result.stdout and "-/3" in result.stdout
    as_json = json.loads(cli("status", str(job_id), "--json").stdout)
    assert as_json["id"] == job_id and as_json["state"] == "PENDING"
    missing = cli("status", "999999")
    assert missing.returncode == 1 and one_line(missing.stderr) == "tmpq: failed: job 999999 does not exist"


def test_cancel_a_pending_job_and_not_a_finished_one(server: Server, finished_job: tuple[int, list]) -> None:
    job_id = new_job(server, seed=41)
    result = tmpq(server, "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert f"job {job_id}: CANCELLED" in result.stdout
    assert server.store.get_job(job_id).state is JobState.CANCELLED
    done = tmpq(server, "cancel", str(finished_job[0]))
    assert done.returncode == 1
    assert one_line(done.stderr) == (
        f"tmpq: failed: job {finished_job[0]} is already SUCCEEDED; a finished job never changes"
    )


# -- front --------------------------------------------------------------------------------------------------


def test_front_json_budget_filter_and_knee(
    server: Server, cli: Callable[..., Ran], finished_job: tuple[int, list[Evaluation]]
) -> None:
    job_id, front = finished_job
    full = json.loads(cli("front", str(job_id), "--json").stdout)
    assert full["count"] == len(front) and full["knee"] is None
    assert sorted(p["key"] for p in full["items"]) == sorted(e.key for e in front)
    budget = float(f"{sorted(e.bitops for e in front)[len(front) // 2]:.6e}")
    result = tmpq(server, "front", str(job_id), "--max-bitops", f"{budget:.6e}", "--knee", "--json")
    assert result.returncode == 0, result.stderr
    within = json.loads(result.stdout)
    expected = {e.key for e in front if e.bitops <= budget}
    assert {p["key"] for p in within["items"]} == expected and 0 < within["count"] < full["count"]
    assert all(p["bitops"] <= budget for p in within["items"])
    assert within["knee"]["key"] in expected
    steps = json.loads(cli("front", str(job_id), "--max-steps", "4", "--sort", "quality", "--json").stdout)
    qualities = [p["quality"] for p in steps["items"]]
    assert qualities == sorted(qualities) and all(p["steps"] <= 4 for p in steps["items"])


def test_front_shows_fp_at_each_schedule_and_each_points_quantization_error(server: Server) -> None:
    """After the front analysis: a quant. PSNR and an SSIM column beside the total PSNR, and a second table with the
    FP model on the front's schedules (its error, SSIM, colour drift, re-scored FDD and cost); ``--json`` carries
    them as ``fp_references``."""
    store = server.store
    job_id = new_job(server)
    claim(store, job_id)
    known = record(store, job_id, 0, generation(4), [])
    front = pareto_front(e for _, e in known)
    analysed = [replace(e, extra={**e.extra, "quant_psnr": 31.25 + i, "ssim": 0.875}) for i, e in enumerate(front)]
    store.record_rescored(job_id, analysed, owner=OWNER)
    references = [
        {"steps": 4, "timesteps": [750, 500, 250, 0], "bitops": 8.5e10, "quality": 0.0123, "psnr": 25.5,
         "ssim": 0.9125, "mean_drift": 0.0375, "fdd_rescored": 12.5},
    ]  # fmt: skip
    store.set_fp_references(job_id, references, owner=OWNER)
    store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
    assert json.loads(tmpq(server, "front", str(job_id), "--json").stdout)["fp_references"] == references
    result = tmpq(server, "front", str(job_id))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "GBitOps" in line)
    assert "quant. PSNR" in result.stdout and "SSIM" in header and "31.2" in result.stdout
    assert "FP at the front's schedules (no quantization)" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "750,500,250,0" in line)
    for cell in ("0.0123", "25.5", "0.912", "0.037", "12.5", "85"):
        assert cell in row, (cell, row)


def test_front_by_latency(server: Server) -> None:
    """A latency job: ``--max-latency-ms`` keeps the points measured within it, the table shows the milliseconds."""
    store = server.store
    job_id = new_job(server, search={"cost": "latency"}, evaluation={"latency_backend": "cpu-int8"})
    claim(store, job_id)
    pairs = [(c, replace(e, latency_ms=10.0 * (i + 1))) for i, (c, e) in enumerate(generation(5))]
    record(store, job_id, 0, pairs, [])
    store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
    front = json.loads(tmpq(server, "front", str(job_id), "--json").stdout)["items"]
    assert front and all(p["latency_ms"] is not None for p in front)
    limit = sorted(p["latency_ms"] for p in front)[len(front) // 2]
    result = tmpq(server, "front", str(job_id), "--max-latency-ms", str(limit), "--sort", "latency_ms", "--json")
    assert result.returncode == 0, result.stderr
    within = [p["latency_ms"] for p in json.loads(result.stdout)["items"]]
    assert within == sorted(x["latency_ms"] for x in front if x["latency_ms"] <= limit) and within
    table = tmpq(server, "front", str(job_id), "--knee")
    assert table.returncode == 0 and re.search(r"GBitOps, [\d.]+ ms\)$", table.stdout, re.MULTILINE), table.stdout
    bad = tmpq(server, "front", str(job_id), "--max-latency-ms", "-3")
    assert bad.returncode == 2 and "--max-latency-ms" in bad.stderr


def test_front_shows_the_fastest_measured_backend_of_each_measured_point(server: Server) -> None:
    """Points measured on the server (``runtime``) get a "measured" cell with their fastest backend end to end; the
    others an empty one; a table without any has no such column."""
    store = server.store
    job_id = new_job(server)
    claim(store, job_id)
    known = record(store, job_id, 0, generation(3), [])
    store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
    assert "measured" not in tmpq(server, "front", str(job_id)).stdout
    keys = [e.key for e in pareto_front(e for _, e in known)]
    fast, slow = fake_measurement("cpu-int8", step_ms=8.0), fake_measurement("reference", step_ms=30.0)
    slow = {**slow, "speedup_vs_reference": 2.5, "speedup_per_step": 0.6}
    store.set_runtime(job_id, keys[0], "reference", slow)
    store.set_runtime(job_id, keys[0], "cpu-int8", fast)
    store.set_runtime(job_id, keys[1], "reference", slow)
    result = tmpq(server, "front", str(job_id))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "GBitOps" in line)
    assert "measured" in header
    rows = {k: next(line for line in result.stdout.splitlines() if k in line) for k in keys}
    speedup = f"{fast['speedup_per_step']:.3g}x/{fast['speedup_vs_reference']:.3g}x, mem 0.80x (cpu-int8)"
    assert speedup in rows[keys[0]], rows[keys[0]]
    assert "0.6x/2.5x, mem 0.80x (reference)" in rows[keys[1]], rows[keys[1]]
    assert all("x (" not in rows[k] for k in keys[2:])
    measured = json.loads(tmpq(server, "front", str(job_id), "--json").stdout)["items"]
    assert {p["key"]: p["runtime"] for p in measured if p["runtime"]} == {
        keys[0]: {"reference": slow, "cpu-int8": fast},
        keys[1]: {"reference": slow},
    }


def test_front_table_with_knee_and_plot(server: Server, finished_job: tuple[int, list[Evaluation]]) -> None:
    job_id, _ = finished_job
    plot = server.tmp / "plots" / "front.png"
    result = tmpq(server, "front", str(job_id), "--max-bitops", "2e12", "--knee", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for header in ("key", "K", "timesteps", "bits", "mse", "PSNR dB", "FDD re-scored", "GBitOps", "is_baseline"):
        assert header in out, header
    assert "rel. cost" in out
    baseline_key = baseline_pair()[0].key()
    baseline_row = next(line for line in out.splitlines() if baseline_key in line)
    assert "yes" in baseline_row and "W8A8" in baseline_row and " 1000 " in baseline_row  # 1e12 BitOps
    # vs FP at the largest K: W8A8@4 gives sum(MACs) = 1e12 / (8 * 8 * 4), and FP@8 = that * 32 * 32 * 8
    assert " 0.0312 " in baseline_row
    with TmpqClient(server.url) as client:
        knee = client.front(job_id, max_bitops=2e12, knee=True)["knee"]
    knee_row = next(line for line in out.splitlines() if knee["key"] in line)
    assert re.match(r"\W*knee\W", knee_row) and knee["bits"] in knee_row  # the marker column
    assert f"knee: {knee['key']} ({knee['bits']}, K={knee['steps']}," in out
    assert f"wrote {plot}" in out
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- errors: unreachable server, authentication -------------------------------------------------------------


def test_an_unreachable_server_exits_1_naming_the_url(server: Server) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = tmpq(server, "jobs", "--url", url)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"tmpq: failed: cannot reach the tmpq server at {url}")


def test_a_missing_or_wrong_token_exits_1(server: Server, cli: Callable[..., Ran]) -> None:
    path = write_spec(server, "auth", seed=51)
    missing = tmpq(server, "submit", str(path), token=None)
    assert missing.returncode == 1
    assert one_line(missing.stderr) == (
        "tmpq: failed: authentication required: a bearer token is required (set TMPQ_API_TOKEN)"
    )
    wrong = cli("submit", str(path), "--token", "nope", token=None)
    assert wrong.returncode == 1
    assert one_line(wrong.stderr) == "tmpq: failed: authentication failed: the bearer token is not valid"
    assert cli("jobs", token=None).returncode == 0  # reads need no token on this server


# -- --wait -------------------------------------------------------------------------------------------------


def test_submit_wait_follows_the_job_until_it_succeeds(server: Server) -> None:
    proc = tmpq_background(
        server,
        "submit",
        str(write_spec(server, "wait", seed=61)),
        "--submission-id",
        "wait-ok",
        "--wait",
        "--poll",
        "0.1",
    )
    try:
        job_id = job_by_submission(server, "wait-ok")
        claim(server.store, job_id)
        known = record(server.store, job_id, 0, generation(0), [])
        time.sleep(0.3)
        record(server.store, job_id, 1, generation(1), known)
        time.sleep(0.3)
        server.store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    job = server.store.get_job(job_id)
    assert f"job {job_id} submitted (PENDING)" in out
    assert f"job {job_id} SUCCEEDED: generation 2/3, evaluated {job.evaluated}, failed {job.failed}" in out
    assert f"job {job_id} SUCCEEDED" in err and "generation 2/3" in err and "hypervolume 0.2" in err  # the bar


def test_wait_on_a_failed_job_exits_1_with_its_error(server: Server, cli: Callable[..., Ran]) -> None:
    path = write_spec(server, "fails", seed=71)
    job_id = job_id_of(cli("submit", str(path), "--submission-id", "fails-1").stdout)
    claim(server.store, job_id)
    server.store.finish_job(job_id, OWNER, JobState.FAILED, error="ValueError: boom at generation 0")
    result = cli("submit", str(path), "--submission-id", "fails-1", "--wait", "--poll", "0.1")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"tmpq: failed: job {job_id} FAILED: ValueError: boom at generation 0"
    status = cli("status", str(job_id), "--wait", "--json")
    assert status.returncode == 1 and json.loads(status.stdout)["error"].startswith("ValueError")


def test_wait_ends_with_exit_1_when_the_job_is_cancelled(server: Server, cli: Callable[..., Ran]) -> None:
    job_id = new_job(server, seed=81)
    timer = threading.Timer(0.5, server.store.cancel_job, [job_id])
    timer.start()
    try:
        result = cli("status", str(job_id), "--wait", "--poll", "0.1")
    finally:
        timer.join()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"tmpq: failed: job {job_id} CANCELLED"


# -- the Python client --------------------------------------------------------------------------------------


def test_client_reads_everything(server: Server, finished_job: tuple[int, list[Evaluation]]) -> None:
    job_id, front = finished_job
    with TmpqClient(server.url) as client:
        assert client.health()["status"] == "ok"
        assert client.version()["api"]
        assert client.job(job_id)["state"] == "SUCCEEDED"
        assert job_id in [j["id"] for j in client.jobs(state="SUCCEEDED")["items"]]
        first = client.candidates(job_id, limit=5)
        rest = client.candidates(job_id, after=first["next_after"], limit=1000)
        keys = [c["key"] for c in first["items"] + rest["items"]]
        assert len(keys) == len(set(keys)) == first["total"] and rest["next_after"] is None
        key = front[0].key
        assert client.candidate(job_id, key)["key"] == key
        assert [p["generation"] for p in client.hypervolume(job_id)["items"]] == [0, 1]
        by_quality = client.front(job_id, sort="quality", max_steps=4)
        qualities = [p["quality"] for p in by_quality["items"]]
        assert qualities == sorted(qualities) and all(p["steps"] <= 4 for p in by_quality["items"])
        assert client.front_png(job_id, budget=1e9).startswith(b"\x89PNG")
        seen: list[str] = []
        assert client.wait(job_id, poll_s=0.05, on_progress=lambda j: seen.append(j["state"]))["id"] == job_id
        assert seen == ["SUCCEEDED"]


def test_client_errors(server: Server) -> None:
    with TmpqClient(server.url + "/api/v1/", token=TOKEN) as client:
        with pytest.raises(ApiError) as missing:
            client.job(999999)
        assert missing.value.status == 404 and str(missing.value) == "job 999999 does not exist"
        with pytest.raises(ApiValidationError) as bad:
            client.submit(upgrade_spec_dict({**SPEC, "steps": [4, 2000]}))
        assert bad.value.status == 422 and bad.value.field == "search.steps" and isinstance(bad.value, ConfigError)
        with pytest.raises(ApiValidationError) as unknown:
            client.submit(upgrade_spec_dict({**SPEC, "colour": "blue"}))
        assert unknown.value.field == "colour" and str(unknown.value).startswith("colour: ")
        job_id = client.submit(upgrade_spec_dict(SPEC | {"seed": 91}))["id"]
        with pytest.raises(WaitTimeout):
            client.wait(job_id, poll_s=0.05, timeout_s=0.2)
        with pytest.raises(ApiError) as unfinished:
            client.delete(job_id)
        assert unfinished.value.status == 409
        assert client.cancel(job_id)["state"] == "CANCELLED"
        client.delete(job_id)
        with pytest.raises(ApiError, match="does not exist"):
            client.job(job_id)
    with TmpqClient(server.url, token="") as anonymous, pytest.raises(ApiError) as denied:
        anonymous.cancel(1)
    assert denied.value.status == 401 and "TMPQ_API_TOKEN" in str(denied.value)
    with pytest.raises(ApiUnavailable) as down:
        TmpqClient("http://127.0.0.1:9", timeout=2).health()
    assert down.value.url == "http://127.0.0.1:9" and "http://127.0.0.1:9" in str(down.value)
    start = time.monotonic()
    with pytest.raises(ApiUnavailable), TmpqClient("http://127.0.0.1:9") as unreachable:
        unreachable.wait(1, poll_s=0.05, retry_s=0.3)  # polls through a short outage, then gives up
    assert 0.2 < time.monotonic() - start < 5
    with pytest.raises(ConfigError, match="url"):
        TmpqClient("not a url")
