"""The job runner: claims, leases, cancellation, failure, takeover and resumption — in-process and with real
runner processes, on every backend. The driver is :func:`tests.server.fakes.run_fake_job` (same protocol as
``workers.driver.run_job``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from server.models import JobModel, JobState
from server.runner import JobRunner, StoreJobSink
from server.settings import Settings
from server.store import Store
from tests.server.fakes import run_fake_job
from workers.jobspec import JobSpec
from workers.protocol import GenerationRecord, JobSink, LeaseLost, ResumeState

REPO = Path(__file__).resolve().parents[2]
SPEC = {
    "version": 1,
    "model": "/models/tiny",
    "population": 6,
    "generations": 4,
    "seed": 3,
    "rescore_samples": 64,  # the fake driver re-scores the final front as the real one does
}


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def settings_for(url: str, **overrides: object) -> Settings:
    return Settings(database_url=url, **{"lease_seconds": 10.0, "poll_seconds": 0.05, **overrides})


def outcome(store: Store, job_id: int) -> tuple:
    """Everything a job's search stored, comparable across jobs."""
    cands = store.list_candidates(job_id, limit=1000).items
    return (
        sorted((c.key, c.generation, c.quality, c.feasible) for c in cands),
        [p.key for p in store.front(job_id).points],
        [h.hypervolume for h in store.hypervolume_history(job_id)],
    )


def reference_outcome(store: Store, spec: dict) -> tuple:
    job, _ = store.create_job(spec)
    JobRunner(store, settings_for(store.url), execute=run_fake_job, owner="reference").run_until_idle()
    assert store.get_job(job.id).state is JobState.SUCCEEDED
    return outcome(store, job.id)


def terminal(store: Store, job_id: int) -> bool:
    return store.get_job(job_id).terminal


def start_process(mode: str, url: str, log: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.server.fakes", mode, "--url", url, "--log", str(log), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def log_lines(log: Path) -> list[tuple[int, int, int]]:
    """(job id, pid, first generation run) per execution of the fake driver."""
    if not log.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in log.read_text().splitlines()]


# -- in-process ---------------------------------------------------------------------------------------------


def test_job_runs_to_success(store: Store) -> None:
    job, _ = store.create_job(SPEC)
    runner = JobRunner(store, settings_for(store.url), execute=run_fake_job)
    assert runner.run_until_idle() == 1
    done = store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.generation == SPEC["generations"] - 1 and done.error is None
    assert done.lease_owner is None and done.finished_at >= done.started_at and done.attempts == 1
    assert len(store.hypervolume_history(job.id)) == SPEC["generations"]
    assert done.evaluated == store.list_candidates(job.id).total > 0 and done.front_size > 0
    assert store.resume_state(job.id).checkpoint == b'{"next": 4}'
    front = store.front(job.id).points
    assert front and all(p.objectives["fdd_rescored"] == pytest.approx(2 * p.objectives["fdd"]) for p in front)


def test_heartbeat_keeps_a_long_job_from_being_taken_over(store: Store) -> None:
    # a lease of 1.5 s (0.6 s was taken over on a loaded 2-core machine: its heartbeat thread ran late)
    job, _ = store.create_job({**SPEC, "generations": 20})
    runner = JobRunner(
        store, settings_for(store.url, lease_seconds=1.5), execute=partial(run_fake_job, delay=0.15), owner="keeper"
    )
    worker = threading.Thread(target=runner.run_until_idle)
    worker.start()
    wait_for(lambda: store.get_job(job.id).lease_owner == "keeper", what="the claim")
    stolen = []
    while worker.is_alive():  # the job runs about two leases long
        stolen.append(store.claim_job("thief", 30))
        time.sleep(0.05)
    worker.join()
    assert all(s is None for s in stolen) and len(stolen) > 5
    done = store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1


def test_failure_is_recorded_with_its_reason(store: Store) -> None:
    job, _ = store.create_job(SPEC)
    JobRunner(store, settings_for(store.url), execute=partial(run_fake_job, fail_at=2)).run_until_idle()
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED and failed.error == "ValueError: boom at generation 2"
    assert failed.generation == 1  # what ran before the failure stays stored
    bad, _ = store.create_job({**SPEC, "population": "many"})
    JobRunner(store, settings_for(store.url), execute=run_fake_job).run_until_idle()
    assert store.get_job(bad.id).error.startswith("ConfigError: search.population")


def test_cancel_is_honoured_between_generations(store: Store) -> None:
    job, _ = store.create_job({**SPEC, "generations": 50})
    runner = JobRunner(store, settings_for(store.url), execute=partial(run_fake_job, delay=0.1))
    runner.start()
    try:
        wait_for(lambda: (store.get_job(job.id).generation or 0) >= 1, what="two generations")
        at_cancel = store.cancel_job(job.id).generation
        wait_for(lambda: terminal(store, job.id), what="the job to stop")
    finally:
        runner.stop()
    stopped = store.get_job(job.id)
    assert stopped.state is JobState.CANCELLED and stopped.lease_owner is None
    assert at_cancel <= stopped.generation <= at_cancel + 1  # at most the generation in flight was finished
    assert runner.active_jobs == []


def test_a_driver_that_swallows_the_cancellation_still_ends_cancelled(store: Store) -> None:
    job, _ = store.create_job(SPEC)

    def careless(spec: JobSpec, sink: JobSink, resume: ResumeState | None) -> None:
        store.cancel_job(sink.job_id)  # the user cancels while generation 0 runs
        try:
            run_fake_job(spec, sink, resume)
        except Exception:  # a driver that cleans up too broadly
            return

    JobRunner(store, settings_for(store.url), execute=careless).run_until_idle()
    ended = store.get_job(job.id)
    assert ended.state is JobState.CANCELLED and ended.generation == 0


def test_stopped_runner_releases_and_another_resumes_with_the_same_result(store: Store) -> None:
    spec = {**SPEC, "generations": 8}
    expected = reference_outcome(store, spec)
    job, _ = store.create_job(spec)
    first = JobRunner(store, settings_for(store.url), execute=partial(run_fake_job, delay=0.05), owner="first")
    first.start()
    wait_for(lambda: (store.get_job(job.id).generation or 0) >= 2, what="three generations")
    first.stop()
    paused = store.get_job(job.id)
    assert paused.state is JobState.PENDING and 2 <= paused.generation < 7
    resumed: list[ResumeState | None] = []

    def spy(spec: JobSpec, sink: JobSink, resume: ResumeState | None) -> None:
        resumed.append(resume)
        run_fake_job(spec, sink, resume)

    JobRunner(store, settings_for(store.url), execute=spy, owner="second").run_until_idle()
    assert resumed[0].last_generation == paused.generation and resumed[0].checkpoint is not None
    done = store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    assert outcome(store, job.id) == expected


def test_runner_that_lost_its_lease_drops_the_job(store: Store) -> None:
    job, _ = store.create_job({**SPEC, "generations": 30})
    runner = JobRunner(store, settings_for(store.url), execute=partial(run_fake_job, delay=0.05), owner="loser")
    runner.start()
    try:
        wait_for(lambda: (store.get_job(job.id).generation or 0) >= 1, what="a generation")
        with store.session(write=True) as s:  # another runner took it over
            s.execute(update(JobModel).where(JobModel.id == job.id).values(lease_owner="thief"))
        wait_for(lambda: runner.active_jobs == [], what="the runner to drop the job")
    finally:
        runner.stop()
    after = store.get_job(job.id)
    assert after.state is JobState.RUNNING and after.lease_owner == "thief" and after.generation < 29


def test_sink_validates_the_record(store: Store) -> None:
    job, _ = store.create_job(SPEC)
    store.claim_job("me", 30)
    sink = StoreJobSink(store, job.id, "me")
    assert isinstance(sink, JobSink) and sink.job_id == job.id
    from search.evaluator import Evaluation

    with pytest.raises(Exception, match="no candidate"):
        sink.on_generation(GenerationRecord(0, [Evaluation("k", 1.0, 1.0, 1.0)], {}, [], 0.0))
    with pytest.raises(LeaseLost):
        StoreJobSink(store, job.id, "not-me").on_generation(GenerationRecord(0, [], {}, [], 0.0))


def test_concurrency_setting_limits_parallel_jobs(store: Store) -> None:
    ids = [store.create_job({**SPEC, "seed": i, "generations": 3})[0].id for i in range(4)]
    running_at_once: list[int] = []
    lock = threading.Lock()
    current = [0]

    def tracked(spec: JobSpec, sink: JobSink, resume: ResumeState | None) -> None:
        with lock:
            current[0] += 1
            running_at_once.append(current[0])
        try:
            run_fake_job(spec, sink, resume, delay=0.05)
        finally:
            with lock:
                current[0] -= 1

    runner = JobRunner(store, settings_for(store.url, runner_concurrency=2), execute=tracked)
    runner.start()
    try:
        wait_for(lambda: all(terminal(store, i) for i in ids), what="all jobs")
    finally:
        runner.stop()
    assert max(running_at_once) == 2
    assert all(store.get_job(i).state is JobState.SUCCEEDED for i in ids)


# -- real processes ---------------------------------------------------------------------------------------------


def test_two_runner_processes_never_take_the_same_job(store: Store, tmp_path: Path, processes: list) -> None:
    ids = [store.create_job({**SPEC, "seed": i, "generations": 3, "population": 3})[0].id for i in range(12)]
    log = tmp_path / "runs.log"
    for _ in range(2):
        processes.append(start_process("runner", store.url, log, "--delay", "0.06", "--concurrency", "2"))
    wait_for(lambda: all(terminal(store, i) for i in ids), timeout=40, what="all jobs")
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        assert proc.wait(15) == 0, proc.stdout.read().decode()
    runs = log_lines(log)
    assert sorted(job for job, _, _ in runs) == sorted(ids)  # each job executed exactly once
    assert {pid for _, pid, _ in runs} == {p.pid for p in processes}  # and both processes took part
    for job_id in ids:
        job = store.get_job(job_id)
        assert job.state is JobState.SUCCEEDED and job.attempts == 1 and job.generation == 2


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A SQLite store of its own (for process-level tests whose SQL is covered on every backend elsewhere)."""
    store = Store(f"sqlite:///{tmp_path / 'own.db'}")
    yield store
    store.close()


def test_killed_runner_is_taken_over_after_its_lease_expires(
    sqlite_store: Store, tmp_path: Path, processes: list
) -> None:
    # The takeover SQL runs on both backends in test_store.py; this is about a runner process dying.
    store = sqlite_store
    spec = {**SPEC, "generations": 12}
    expected = reference_outcome(store, spec)
    job, _ = store.create_job(spec)
    log = tmp_path / "runs.log"
    processes.append(start_process("runner", store.url, log, "--delay", "0.2", "--lease", "1.0"))
    wait_for(lambda: (store.get_job(job.id).generation or -1) >= 1, timeout=30, what="two generations")
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(10)
    dead = store.get_job(job.id)
    assert dead.state is JobState.RUNNING and dead.generation < 11
    rescuer = JobRunner(store, settings_for(store.url), execute=partial(run_fake_job, log=log), owner="rescuer")
    assert rescuer.run_until_idle() == 0  # the dead runner's lease has not expired yet
    wait_for(lambda: rescuer.run_until_idle() == 1, timeout=10, what="the takeover")
    done = store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    first, second = log_lines(log)
    assert first[1] == processes[0].pid and first[2] == 0
    assert second[1] == os.getpid() and second[2] == dead.generation + 1  # resumed after the last stored one
    assert outcome(store, job.id) == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_api_and_runner_in_one_uvicorn_process(tmp_path: Path, model_root: Path, processes: list) -> None:
    port = free_port()
    log = tmp_path / "runs.log"
    url = f"sqlite:///{tmp_path / 'serve.db'}"  # the backends are covered above; this is about the process
    processes.append(
        start_process("serve", url, log, "--port", str(port), "--delay", "0.05", "--model-root", str(model_root))
    )
    base = f"http://127.0.0.1:{port}/api/v1"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=30, what="uvicorn")
    with httpx.Client(base_url=base, timeout=10) as client:
        submitted = client.post(
            "/jobs",
            json={
                "model": "tiny-ddpm",
                "search": {"steps": [4, 8], "population": 5, "generations": 3},
                "submission_id": "e2e",
            },
        )
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        wait_for(lambda: client.get(f"/jobs/{job_id}").json()["state"] == "SUCCEEDED", what="the job")
        front = client.get(f"/jobs/{job_id}/front", params={"knee": "true"}).json()
        assert front["count"] > 0 and front["knee"] is not None and front["generation"] == 2
        assert len(client.get(f"/jobs/{job_id}/hypervolume").json()["items"]) == 3
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert [pid for _, pid, _ in log_lines(log)] == [processes[0].pid]


# -- hygiene ------------------------------------------------------------------------------------------------------


def test_server_never_imports_torch_or_ray() -> None:
    code = (
        "import sys\n"
        "import server.app, server.runner, server.store, server.execution, workers.protocol, server.settings\n"
        "import server.api.routes.jobs, server.api.routes.front, server.modelcheck, server.submission\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'diffusers', 'pymoo') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_missing_driver_fails_the_job_with_a_clear_reason(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "workers.driver", None)  # as if workers.driver could not be imported
    job, _ = store.create_job(SPEC)
    JobRunner(store, settings_for(store.url)).run_until_idle()
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED and failed.error.startswith("DriverUnavailable: the search driver")
