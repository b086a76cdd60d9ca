"""A job's calibrated supernet (``calibration``): the driver's summary (``workers.driver.calibration_summary``),
stored on the job row by the runner's sink (SQLite and PostgreSQL), answered by ``GET /jobs/{id}`` and shown as one
line by ``tmpq status`` and by the web page (``server/static/activity.js``, the same line: checked with Node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from search.errors import ConfigError, NotFound
from server.cli_remote import supernet_text
from server.models import JobState
from server.schemas import JobOut
from server.store import MAX_CALIBRATION_BYTES, Store
from tests.server.test_activity import run_activity_js, running_job

SUMMARY: dict[str, Any] = {
    "supernet": "abc-def",
    "source": "calibrated",
    "strategy": "tcaq",
    "seconds": {"4": 50.2, "8": 61.9},
    "estimate_s": 118.0,
    "report": {
        "steps": 10,
        "samples": 64,
        "bits": {
            "8": {"mse": 0.0002, "psnr": 43.01, "worst": [{"name": "conv_out", "rel_mse": 0.001}]},
            "4": {"mse": 0.04, "psnr": 20.06, "worst": [{"name": "up_blocks.1", "rel_mse": 0.3}]},
        },
        "ranking": "site",
        "range_check": {"mse": 0.0003, "psnr": 41.2, "strategy": "range", "seconds": 9.0, "passed": True},
    },
}
LINES = [
    (
        SUMMARY,
        "calibrated in 1m52s (estimated ~2m) · W4A4 20.1 dB · W8A8 43.0 dB against FP at 10 steps · worst at W4: "
        "up_blocks.1 · range check passed",
    ),
    ({"source": "shipped", "seconds": {"4": 3.0}, "report": None}, "from the shipped · no calibration report"),
    ({"source": "cache", "report": {"skipped": "no noise schedule"}}, "from the cache · no report: no noise schedule"),
    (None, None),
]


def test_the_summary_round_trip_kept_after_the_job_ends(store: Store) -> None:
    job_id = running_job(store)
    assert store.get_job(job_id).calibration is None
    assert store.set_calibration(job_id, SUMMARY, owner="runner-a") is True
    assert store.get_job(job_id).calibration == SUMMARY
    assert JobOut.from_record(store.get_job(job_id)).calibration == SUMMARY
    assert store.set_calibration(job_id, {"source": "cache"}, owner="runner-b") is False  # not the lease holder
    store.finish_job(job_id, "runner-a", JobState.SUCCEEDED)
    assert store.get_job(job_id).calibration == SUMMARY  # kept for good
    assert store.set_calibration(job_id, {"source": "cache"}) is False  # a finished job changes no more
    with pytest.raises(NotFound):
        store.set_calibration(987654, SUMMARY)


def test_a_summary_too_large_or_not_json_is_refused(store: Store) -> None:
    job_id = running_job(store)
    with pytest.raises(ConfigError, match="calibration"):
        store.set_calibration(job_id, {"report": "x" * MAX_CALIBRATION_BYTES})
    with pytest.raises(ConfigError, match="calibration"):
        store.set_calibration(job_id, ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert store.get_job(job_id).calibration is None


@pytest.mark.parametrize(("summary", "line"), LINES)
def test_the_cli_line(summary: Any, line: str | None) -> None:
    assert supernet_text(summary) == line


def test_the_web_page_writes_the_same_line(tmp_path: Path) -> None:
    """``supernetText`` of ``server/static/activity.js`` run by Node on the same cases as ``supernet_text``."""
    cases = json.dumps([summary for summary, _ in LINES])
    lines = run_activity_js(tmp_path, "supernetText", f"console.log(JSON.stringify({cases}.map(supernetText)));\n")
    assert lines == [line for _, line in LINES]
