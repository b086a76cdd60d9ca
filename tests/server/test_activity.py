"""What a running job is doing (``progress.activity``): the driver's ``sink.on_progress`` reports, stored on the job
row (SQLite and PostgreSQL), answered by ``GET /jobs/{id}``, and shown as one line by ``tmpq status`` / ``jobs`` /
``submit --wait`` and by the web page (``server/static/activity.js``, the same line: checked with Node)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from search.errors import NotFound
from server.cli_remote import activity_text, duration_text, eta_text
from server.models import JobState
from server.runner import StoreJobSink
from server.schemas import JobOut
from server.store import MAX_ACTIVITY_BYTES, Store, bounded_activity
from tests.server.cli_run import isolate_env, run_main
from tests.server.fakes import CALIBRATING
from tests.server.test_runner import free_port, start_process, wait_for
from workers.protocol import JobInterrupted, JobSink, LeaseLost, report_progress

REPO = Path(__file__).resolve().parents[2]
ACTIVITY_JS = REPO / "server" / "static" / "activity.js"
CALIBRATING_LINE = "calibrating W6 (2/3): reconstruction 7/12, round 1, 1m20s elapsed, ~3m left"
SPEC = {"version": 2, "model": {"path": "tiny-ddpm"}, "search": {"steps": [4, 8], "population": 5, "generations": 3}}


def running_job(store: Store, owner: str = "runner-a") -> int:
    job, _ = store.create_job(SPEC)
    claimed = store.claim_job(owner, 60)
    assert claimed is not None and claimed.id == job.id
    return job.id


# -- the store ------------------------------------------------------------------------------------------------


def test_activity_round_trip_and_cleared_when_the_job_leaves_running(store: Store) -> None:
    job_id = running_job(store)
    assert store.get_job(job_id).activity is None and store.get_job(job_id).activity_at is None
    assert store.set_activity(job_id, CALIBRATING, owner="runner-a") is True
    job = store.get_job(job_id)
    assert job.activity == CALIBRATING  # unknown keys ("fake") kept as they are
    assert job.activity_at is not None and job.activity_at >= job.started_at
    assert store.list_jobs().items[0].activity == CALIBRATING
    searching = {"stage": "searching", "message": "generation 1/3 stored", "calibration": None}
    assert store.set_activity(job_id, searching, owner="runner-a") is True
    assert store.get_job(job_id).activity == searching
    # only the lease holder writes; another runner's report is refused and changes nothing
    assert store.set_activity(job_id, CALIBRATING, owner="runner-b") is False
    assert store.get_job(job_id).activity == searching
    store.finish_job(job_id, "runner-a", JobState.SUCCEEDED)
    done = store.get_job(job_id)
    assert done.activity is None and done.activity_at is None  # a finished job is doing nothing
    assert store.set_activity(job_id, CALIBRATING) is False and store.get_job(job_id).activity is None
    with pytest.raises(NotFound):
        store.set_activity(987654, CALIBRATING)


def test_a_released_or_taken_over_job_shows_no_stale_activity(store: Store) -> None:
    job_id = running_job(store)
    store.set_activity(job_id, CALIBRATING, owner="runner-a")
    store.release_job(job_id, "runner-a")
    assert store.get_job(job_id).state is JobState.PENDING and store.get_job(job_id).activity is None
    assert store.claim_job("runner-b", 60).id == job_id
    store.set_activity(job_id, CALIBRATING, owner="runner-b")
    store.renew_leases("runner-b", [job_id], -1)  # its lease expired: runner-b died
    assert store.claim_job("runner-c", 60).id == job_id  # taken over
    assert store.get_job(job_id).activity is None


def test_a_large_or_odd_report_is_bounded_and_json_safe(store: Store) -> None:
    job_id = running_job(store)
    odd = {**CALIBRATING, "calibration": {**CALIBRATING["calibration"], "eta_s": math.inf, "elapsed_s": math.nan}}
    store.set_activity(job_id, {**odd, 7: "a key that is not a string"})
    stored = store.get_job(job_id).activity
    assert stored["calibration"]["eta_s"] is None and stored["calibration"]["elapsed_s"] is None
    assert stored["7"] == "a key that is not a string"
    huge = {**CALIBRATING, "debug": "x" * 100_000, "message": "m" * 10_000}
    store.set_activity(job_id, huge)
    stored = store.get_job(job_id).activity
    assert len(json.dumps(stored).encode()) <= MAX_ACTIVITY_BYTES
    assert "debug" not in stored and stored["calibration"] == CALIBRATING["calibration"]
    assert stored["stage"] == "calibrating" and stored["message"] == "m" * 500
    loop: dict[str, Any] = {"stage": "loading"}
    loop["self"] = loop
    assert bounded_activity(loop)["message"].startswith("an unreadable activity report")
    assert bounded_activity({"stage": "x" * 10_000, "message": ["y" * 5000]}) == {"stage": "x" * 500}


def test_the_runners_sink_stores_reports_and_raises_only_interruptions(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = running_job(store)
    sink = StoreJobSink(store, job_id, "runner-a")
    assert isinstance(sink, JobSink)
    report_progress(sink, CALIBRATING)
    assert store.get_job(job_id).activity == CALIBRATING
    report_progress(object(), CALIBRATING)  # a sink without on_progress is skipped
    # a storage error (here: a database without the schema) is logged, not raised
    broken = Store(f"sqlite:///{tmp_path / 'no-schema.db'}", migrate=False)
    try:
        StoreJobSink(broken, job_id, "runner-a").on_progress({"stage": "searching", "message": "x"})
    finally:
        broken.close()
    assert f"job {job_id}: could not store its activity" in caplog.text
    assert store.get_job(job_id).activity == CALIBRATING
    # another runner took the job over: the report is refused and the sink says the lease is lost
    store.renew_leases("runner-a", [job_id], -1)
    assert store.claim_job("runner-b", 60).id == job_id
    with pytest.raises(LeaseLost):
        sink.on_progress(CALIBRATING)
    assert store.get_job(job_id).activity is None
    # a cancelled job: the report is stored, then the interruption raised (the driver lets it through)
    store.cancel_job(job_id)
    held = StoreJobSink(store, job_id, "runner-b")
    held._control.cancelled = True  # what the heartbeat sets from the job's cancel flag
    with pytest.raises(JobInterrupted):
        held.on_progress(CALIBRATING)
    assert store.get_job(job_id).activity == CALIBRATING


# -- the response body ------------------------------------------------------------------------------------------


def test_job_out_carries_the_activity(store: Store) -> None:
    job_id = running_job(store)
    assert JobOut.from_record(store.get_job(job_id)).progress.activity is None
    store.set_activity(job_id, CALIBRATING)
    out = JobOut.from_record(store.get_job(job_id))
    assert out.progress.activity == CALIBRATING
    assert out.progress.activity_at is not None and out.progress.activity_at.tzinfo is not None
    body = json.loads(out.model_dump_json())
    assert body["progress"]["activity"]["calibration"]["bits"] == 6
    assert body["progress"]["activity_at"].endswith("Z")
    schema = JobOut.model_json_schema()["$defs"]["Progress"]["properties"]
    assert "activity" in schema and "calibrating" in schema["activity"]["description"]


# -- the line -------------------------------------------------------------------------------------------------------

LINES: list[tuple[Any, str | None]] = [
    (CALIBRATING, CALIBRATING_LINE),
    (
        {"stage": "calibrating", "message": "", "calibration": {**CALIBRATING["calibration"], "round": None}},
        "calibrating W6 (2/3): reconstruction 7/12, 1m20s elapsed, ~3m left",
    ),
    (
        {
            "stage": "calibrating",
            "calibration": {"source": "calibrating", "bits": 8, "bit_index": 2, "bit_count": 3, "phase": "done",
                            "round": 0, "step": 12, "total": 12, "elapsed_s": 3725.9, "eta_s": None},
        },
        "calibrating W8 (3/3): done, 1h02m elapsed",
    ),
    (
        {"stage": "calibrating", "calibration": {"source": "calibrating", "phase": "ranges", "step": 3,
                                                 "total": 0, "elapsed_s": 5, "eta_s": 30.5}},
        "calibrating: ranges, 5s elapsed, ~31s left",
    ),
    (  # before the first bit option: no "(1/3)"
        {"stage": "calibrating", "calibration": {"source": "calibrating", "bits": None, "bit_index": 0,
                                                 "bit_count": 3, "phase": "trajectories", "round": None, "step": 2,
                                                 "total": 10, "elapsed_s": 12.0, "eta_s": None}},
        "calibrating: trajectories 2/10, 12s elapsed",
    ),
    (
        {"stage": "calibrating", "message": "supernet loaded (cache)", "calibration": {"source": "cache", "bits": 6}},
        "supernet loaded (cache)",
    ),
    ({"stage": "searching", "message": "  generation 3/10\n stored ", "calibration": None}, "generation 3/10 stored"),
    ({"stage": "rescoring"}, "rescoring"),
    ({"calibration": {"source": "calibrating", "bits": True, "eta_s": "soon"}}, "calibrating"),
    ({}, None),
    (None, None),
    ([], None),
]  # fmt: skip


@pytest.mark.parametrize(("activity", "line"), LINES)
def test_the_cli_line(activity: Any, line: str | None) -> None:
    assert activity_text(activity) == line


def test_durations() -> None:
    assert [duration_text(s) for s in (0, 59.9, 60, 80.4, 3599, 3600, 7530)] == [
        "0s", "59s", "1m00s", "1m20s", "59m59s", "1h00m", "2h05m",
    ]  # fmt: skip
    assert [eta_text(s) for s in (-3, 0.4, 30.5, 59.4, 89, 90, 185, 3600, 5430)] == [
        "~0s", "~0s", "~31s", "~59s", "~1m", "~2m", "~3m", "~1h00m", "~1h31m",
    ]  # fmt: skip


def run_activity_js(tmp_path: Path, names: str, body: str) -> Any:
    """Run ``body`` (JavaScript printing one JSON value) with ``names`` imported from ``activity.js`` in Node; its
    output, parsed. Skips the test where Node is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    module = tmp_path / "activity.mjs"
    shutil.copyfile(ACTIVITY_JS, module)
    script = f"import {{ {names} }} from {json.dumps(str(module))};\n{body}"
    ran = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_the_web_page_writes_the_same_line(tmp_path: Path) -> None:
    """``server/static/activity.js`` run by Node on the same cases as the CLI's ``activity_text``."""
    cases = [activity for activity, _ in LINES]
    out = run_activity_js(
        tmp_path,
        "activityText, jobActivity",
        f"const cases = {json.dumps(cases)};\n"
        "const running = { state: 'RUNNING', progress: { activity: cases[0] } };\n"
        "const done = { state: 'SUCCEEDED', progress: { activity: cases[0] } };\n"
        "console.log(JSON.stringify({ lines: cases.map(activityText), running: jobActivity(running),"
        " done: jobActivity(done) }));\n",
    )
    assert out["lines"] == [line for _, line in LINES]
    assert out["running"] == CALIBRATING_LINE and out["done"] is None


def test_the_page_shows_the_line_for_a_running_job() -> None:
    page = (REPO / "server" / "static" / "index.html").read_text()
    script = (REPO / "server" / "static" / "app.js").read_text()
    assert 'id="job-activity"' in page
    assert 'import { jobActivity, supernetText } from "./activity.js";' in script
    assert '$("job-activity").textContent = activity' in script
    assert 'id="job-supernet"' in page and "supernetText(job.calibration)" in script


# -- through a real tmpq serve (uvicorn + runner) ---------------------------------------------------------------


@pytest.fixture
def serve_process(store_url: str, model_root: Path, tmp_path: Path) -> Any:
    """A real ``tmpq serve`` (``tests.server.fakes serve``) whose fake driver reports ``CALIBRATING`` and waits for
    ``tmp_path / "gate"``; yields ``(base URL, gate)``."""
    port = free_port()
    gate = tmp_path / "gate"
    proc = start_process(
        "serve", store_url, tmp_path / "runs.log", "--port", str(port), "--model-root", str(model_root),
        "--activity-gate", str(gate), "--delay", "0.05",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/api/v1/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=30, what="tmpq serve")
        yield base, gate
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_reported_activity_is_what_get_job_answers(
    serve_process: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, gate = serve_process
    with httpx.Client(base_url=f"{base}/api/v1", timeout=10) as client:
        submitted = client.post("/jobs", json={**SPEC, "model": "tiny-ddpm"})
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        assert submitted.json()["progress"]["activity"] is None

        def job() -> dict[str, Any]:
            return client.get(f"/jobs/{job_id}").json()

        wait_for(lambda: job()["progress"]["activity"] is not None, what="the activity")
        running = job()
        assert running["state"] == "RUNNING" and running["progress"]["activity"] == CALIBRATING
        assert running["progress"]["activity_at"].endswith("Z")
        listed = client.get("/jobs", params={"state": "RUNNING"}).json()["items"]
        assert [j["progress"]["activity"] for j in listed] == [CALIBRATING]

        isolate_env(monkeypatch, base)
        cli: Callable[..., subprocess.CompletedProcess[str]] = lambda *argv: run_main(capsys, argv)  # noqa: E731
        status = cli("status", str(job_id))
        assert status.returncode == 0, status.stderr
        assert any(line.split() == ["activity", *CALIBRATING_LINE.split()] for line in status.stdout.splitlines())
        table = cli("jobs")
        assert table.returncode == 0 and "activity" in table.stdout and "calibrating W6 (2/3)" in table.stdout

        gate.touch()  # the "calibration" ends; the search runs to the end
        wait_for(lambda: job()["state"] == "SUCCEEDED", what="the job")
        done = job()
        assert done["progress"]["activity"] is None and done["progress"]["activity_at"] is None
        assert not any(line.startswith("activity") for line in cli("status", str(job_id)).stdout.splitlines())
