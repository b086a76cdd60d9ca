"""What a job warned about and went on anyway (``warnings``): kept on the job row (SQLite and PostgreSQL) by the
runner's sink, for good, and answered by ``GET /jobs/{id}``. The REST path with a real job is in ``test_e2e_sd``."""

from __future__ import annotations

import pytest

from search.errors import NotFound
from server.models import JobState
from server.runner import StoreJobSink
from server.schemas import JobOut
from server.store import MAX_WARNING_CHARS, MAX_WARNINGS, Store
from tests.server.test_activity import running_job
from workers.local import WARNINGS_FILE, DirectorySink
from workers.protocol import LeaseLost, report_warning

TRUNCATED = "prompt 'a blue circle on a white page' is longer than the tokenizer's 16 tokens: truncated"


def test_warnings_are_kept_once_in_order_and_after_the_job_ends(store: Store) -> None:
    job_id = running_job(store)
    assert store.get_job(job_id).warnings == ()
    assert store.add_warning(job_id, TRUNCATED, owner="runner-a") is True
    assert store.add_warning(job_id, "second\nline  with   spaces", owner="runner-a") is True
    assert store.add_warning(job_id, TRUNCATED, owner="runner-a") is True  # already there: not repeated
    assert store.get_job(job_id).warnings == (TRUNCATED, "second line with spaces")
    assert store.add_warning(job_id, "from another runner", owner="runner-b") is False
    store.finish_job(job_id, "runner-a", JobState.SUCCEEDED)
    assert store.get_job(job_id).warnings == (TRUNCATED, "second line with spaces")  # kept, unlike activity
    assert store.add_warning(job_id, "after the end") is False
    assert store.list_jobs().items[0].warnings == (TRUNCATED, "second line with spaces")
    with pytest.raises(NotFound):
        store.add_warning(987654, TRUNCATED)


def test_warnings_are_bounded(store: Store) -> None:
    job_id = running_job(store)
    store.add_warning(job_id, "x" * 10_000)
    for i in range(MAX_WARNINGS + 10):
        store.add_warning(job_id, f"warning {i}")
    kept = store.get_job(job_id).warnings
    assert len(kept) == MAX_WARNINGS and kept[0] == "x" * MAX_WARNING_CHARS
    assert kept[-1] == f"warning {MAX_WARNINGS - 2}"


def test_the_runners_sink_keeps_warnings_and_the_response_shows_them(store: Store) -> None:
    job_id = running_job(store)
    sink = StoreJobSink(store, job_id, "runner-a")
    report_warning(sink, TRUNCATED)
    report_warning(object(), TRUNCATED)  # a sink without on_warning is skipped
    out = JobOut.from_record(store.get_job(job_id))
    assert out.warnings == [TRUNCATED] and '"warnings":["prompt ' in out.model_dump_json()
    store.renew_leases("runner-a", [job_id], -1)
    assert store.claim_job("runner-b", 60).id == job_id
    with pytest.raises(LeaseLost):  # taken over: refused, and the sink says the lease is lost
        sink.on_warning("late")
    assert store.get_job(job_id).warnings == (TRUNCATED,)


def test_a_local_search_writes_its_warnings_to_a_file(tmp_path) -> None:
    sink = DirectorySink(tmp_path / "out")
    report_warning(sink, TRUNCATED)
    report_warning(sink, "another")
    assert (tmp_path / "out" / WARNINGS_FILE).read_text().splitlines() == [TRUNCATED, "another"]


def test_tmpq_status_prints_the_warnings(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli_remote import _print_job

    job_id = running_job(store)
    store.add_warning(job_id, "prompt 'x' is longer than the tokenizer's 16 tokens: truncated")
    _print_job(JobOut.from_record(store.get_job(job_id)).model_dump(mode="json"))
    out = " ".join(capsys.readouterr().out.split())
    assert "warning prompt 'x' is longer than the tokenizer's 16 tokens: truncated" in out
