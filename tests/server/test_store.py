"""The store's contract, run against every backend (SQLite file, PostgreSQL)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from search.candidate import Candidate
from search.errors import ConfigError, Conflict, InvalidCandidate, NotFound, StoreError
from search.evaluator import Evaluation
from search.pareto import pareto_front
from server.models import CandidateModel, HypervolumeModel, JobModel, JobState, ObjectiveValueModel
from server.store import Store
from tests.server.fakes import fake_candidate, fake_evaluation, fake_measurement
from workers.protocol import LeaseLost

SPEC = {"version": 1, "model": "/models/tiny", "population": 8, "generations": 3, "seed": 0}


def generation_pairs(generation: int, n: int = 8, seed: int = 0) -> list[tuple[Candidate, Evaluation]]:
    pairs = {}
    for i in range(n):
        c = fake_candidate(seed, generation, i)
        pairs[c.key()] = (c, fake_evaluation(c))
    return list(pairs.values())


def front_of(pairs: list[tuple[Candidate, Evaluation]]) -> list[str]:
    return [e.key for e in pareto_front(e for _, e in pairs)]


def running_job(store: Store, owner: str = "runner-a", spec: dict | None = None) -> int:
    job, _ = store.create_job(spec or SPEC)
    claimed = store.claim_job(owner, 60)
    assert claimed is not None and claimed.id == job.id
    return job.id


def count(store: Store, model: type, **where: object) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model).filter_by(**where)) or 0


# -- jobs ------------------------------------------------------------------------------------------------


def test_create_get_list(store: Store) -> None:
    ids = [store.create_job({**SPEC, "seed": i})[0].id for i in range(5)]
    job = store.get_job(ids[0])
    assert job.state is JobState.PENDING and job.spec["seed"] == 0 and job.generation is None
    assert job.attempts == 0 and job.created_at is not None and not job.terminal
    page = store.list_jobs(limit=2, offset=1)
    assert page.total == 5 and [j.id for j in page.items] == [ids[3], ids[2]]
    store.cancel_job(ids[1])
    assert [j.id for j in store.list_jobs(states=["CANCELLED"]).items] == [ids[1]]
    assert store.list_jobs(states=[JobState.PENDING, JobState.RUNNING]).total == 4
    with pytest.raises(NotFound):
        store.get_job(999)


def test_submission_id_is_idempotent(store: Store) -> None:
    first, created = store.create_job(SPEC, submission_id="sub-1")
    again, created_again = store.create_job(dict(SPEC), submission_id="sub-1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="sub-1"):
        store.create_job({**SPEC, "seed": 7}, submission_id="sub-1")
    other, created_other = store.create_job(SPEC, submission_id="sub-2")
    assert created_other and other.id != first.id
    assert store.list_jobs().total == 2


def test_concurrent_submissions_make_one_job(store: Store) -> None:
    results: list[int] = []
    errors: list[Exception] = []

    def submit() -> None:
        try:
            results.append(store.create_job(SPEC, submission_id="race")[0].id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and store.list_jobs().total == 1


# -- claims and leases ----------------------------------------------------------------------------------------


def test_claim_takes_oldest_pending_once(store: Store) -> None:
    a, _ = store.create_job(SPEC)
    b, _ = store.create_job({**SPEC, "seed": 1})
    first = store.claim_job("r1", 30)
    second = store.claim_job("r2", 30)
    assert (first.id, second.id) == (a.id, b.id)
    assert first.state is JobState.RUNNING and first.lease_owner == "r1" and first.attempts == 1
    assert first.started_at is not None and first.lease_expires_at > first.started_at
    assert store.claim_job("r3", 30) is None


def test_claims_from_many_threads_are_disjoint(store: Store) -> None:
    ids = {store.create_job({**SPEC, "seed": i})[0].id for i in range(12)}
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := store.claim_job(name, 30)) is not None:
            with lock:
                taken.append((name, job.id))

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in taken) == sorted(ids)


def test_expired_lease_is_taken_over_and_fences_the_old_owner(store: Store) -> None:
    job_id = running_job(store, "dead")
    store.record_generation(job_id, 0, generation_pairs(0), front_of(generation_pairs(0)), 1.0, owner="dead")
    assert store.renew_leases("dead", [job_id], 0.3) == {job_id: False}
    assert store.claim_job("alive", 30) is None  # not expired yet: nothing to claim
    time.sleep(0.35)
    taken = store.claim_job("alive", 30)
    assert taken is not None and taken.id == job_id and taken.lease_owner == "alive" and taken.attempts == 2
    assert taken.generation == 0
    with pytest.raises(LeaseLost):
        store.record_generation(job_id, 1, generation_pairs(1), [], 1.0, owner="dead")
    with pytest.raises(LeaseLost):
        store.finish_job(job_id, "dead", JobState.SUCCEEDED)
    assert store.renew_leases("dead", [job_id], 30) == {}
    assert store.get_job(job_id).generation == 0
    assert store.finish_job(job_id, "alive", JobState.SUCCEEDED).state is JobState.SUCCEEDED


def test_finish_and_release(store: Store) -> None:
    job_id = running_job(store)
    released = store.release_job(job_id, "runner-a")
    assert released.state is JobState.PENDING and released.lease_owner is None
    assert store.claim_job("runner-b", 30).id == job_id
    failed = store.finish_job(job_id, "runner-b", JobState.FAILED, "ValueError: boom")
    assert failed.state is JobState.FAILED and failed.error == "ValueError: boom" and failed.finished_at is not None
    with pytest.raises(LeaseLost):
        store.finish_job(job_id, "runner-b", JobState.SUCCEEDED)
    with pytest.raises(ValueError, match="terminal"):
        store.finish_job(job_id, "runner-b", JobState.RUNNING)


def test_release_of_a_cancelled_job_cancels_it(store: Store) -> None:
    job_id = running_job(store)
    store.cancel_job(job_id)
    assert store.release_job(job_id, "runner-a").state is JobState.CANCELLED


def test_cancel_rules(store: Store) -> None:
    pending, _ = store.create_job(SPEC)
    cancelled = store.cancel_job(pending.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None
    assert store.cancel_job(pending.id).state is JobState.CANCELLED  # again: unchanged
    running = running_job(store, spec={**SPEC, "seed": 3})
    flagged = store.cancel_job(running)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    assert store.renew_leases("runner-a", [running], 30) == {running: True}
    store.finish_job(running, "runner-a", JobState.SUCCEEDED)
    with pytest.raises(Conflict, match="SUCCEEDED"):
        store.cancel_job(running)
    assert store.get_job(running).state is JobState.SUCCEEDED
    with pytest.raises(Conflict):
        store.record_generation(running, 5, [], [], 0.0)
    with pytest.raises(NotFound):
        store.cancel_job(12345)


def test_cancelled_job_with_dead_runner_ends_cancelled_on_next_claim(store: Store) -> None:
    job_id = running_job(store)
    store.renew_leases("runner-a", [job_id], 0.01)
    store.cancel_job(job_id)
    time.sleep(0.05)
    assert store.claim_job("runner-b", 30) is None
    assert store.get_job(job_id).state is JobState.CANCELLED


# -- generations ----------------------------------------------------------------------------------------


def test_record_generation_stores_everything_in_one_go(store: Store) -> None:
    job_id = running_job(store)
    pairs = generation_pairs(0)
    front = front_of(pairs)
    job = store.record_generation(job_id, 0, pairs, front, 0.5, b"ckpt-0", owner="runner-a")
    assert (job.generation, job.evaluated, job.front_size, job.hypervolume) == (0, len(pairs), len(front), 0.5)
    assert job.failed == sum(not e.ok for _, e in pairs) and job.failed > 0
    assert count(store, CandidateModel, job_id=job_id) == len(pairs)
    c, e = next((c, e) for c, e in pairs if e.ok)
    stored = store.get_candidate(job_id, c.key())
    assert stored.candidate == c.to_dict() and stored.steps == c.steps and stored.bits == c.bits_summary()
    assert stored.quality == pytest.approx(e.quality) and stored.bitops == e.bitops and stored.feasible
    assert stored.objectives == pytest.approx(
        {
            "quality": e.quality,
            "bitops": e.bitops,
            "weight_bytes": e.weight_bytes,
            "steps": c.steps,
            "fdd": e.extra["fdd"],
            "psnr": e.extra["psnr"],
        }
    )
    assert stored.info == {"device": "fake"}
    bad_c, bad_e = next((c, e) for c, e in pairs if not e.ok)
    bad = store.get_candidate(job_id, bad_c.key())
    assert not bad.feasible and bad.error == bad_e.error and bad.quality is None and not bad.non_dominated
    assert bad.objectives["quality"] is None
    assert {p.key for p in store.front(job_id).points} == set(front)
    assert [(h.generation, h.hypervolume) for h in store.hypervolume_history(job_id)] == [(0, 0.5)]
    resume = store.resume_state(job_id)
    assert resume.checkpoint == b"ckpt-0" and resume.checkpoint_generation == 0 and resume.last_generation == 0


def test_record_generation_is_idempotent(store: Store) -> None:
    job_id = running_job(store)
    g0, g1 = generation_pairs(0), generation_pairs(1)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.5, b"c0", owner="runner-a")
    store.record_generation(job_id, 1, g1, front_of(g0 + g1), 0.7, b"c1", owner="runner-a")
    before = (
        count(store, CandidateModel, job_id=job_id),
        count(store, ObjectiveValueModel),
        count(store, HypervolumeModel, job_id=job_id),
    )
    # a resumed driver re-records generation 1 (and a candidate of generation 0 again)
    job = store.record_generation(job_id, 1, [*g1, g0[0]], front_of(g0 + g1), 0.7, b"c1", owner="runner-a")
    after = (
        count(store, CandidateModel, job_id=job_id),
        count(store, ObjectiveValueModel),
        count(store, HypervolumeModel, job_id=job_id),
    )
    assert before == after and job.generation == 1 and job.evaluated == len(g0) + len(g1)
    assert store.get_candidate(job_id, g0[0][0].key()).generation == 0
    assert [h.hypervolume for h in store.hypervolume_history(job_id)] == [0.5, 0.7]


def test_front_flag_follows_every_generation(store: Store) -> None:
    job_id = running_job(store)
    g0 = generation_pairs(0)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.1, owner="runner-a")
    better = Candidate.uniform((90, 50), ("down.0.conv", "mid.attn.qk", "up.1.conv"), 2, 2)
    winner = Evaluation(better.key(), 0.0, 1.0, 1.0)  # dominates everything
    job = store.record_generation(job_id, 1, [(better, winner)], [better.key()], 0.9, owner="runner-a")
    assert job.front_size == 1
    assert [p.key for p in store.front(job_id).points] == [better.key()]
    with store.session() as s:
        flagged = s.scalar(select(func.count()).where(CandidateModel.job_id == job_id, CandidateModel.non_dominated))
    assert flagged == 1


def test_rescored_metrics_are_added_to_stored_candidates(store: Store) -> None:
    job_id = running_job(store)
    g0 = generation_pairs(0)
    before = store.record_generation(job_id, 0, g0, front_of(g0), 0.5, owner="runner-a")
    front = [e for _, e in g0 if e.key in set(front_of(g0))]
    rescored = [replace(e, extra={"fdd_rescored": 7.0 + i, "fdd": 1.0, "device": "gpu"}) for i, e in enumerate(front)]
    after = store.record_rescored(job_id, rescored, owner="runner-a")
    assert after.results_version == before.results_version + 1 and after.generation == 0
    first = store.get_candidate(job_id, front[0].key)
    assert first.objectives["fdd_rescored"] == 7.0 and first.objectives["fdd"] == 1.0
    assert first.objectives["quality"] == pytest.approx(front[0].quality) and first.info == {"device": "gpu"}
    assert [p.key for p in store.front(job_id).points] == front_of(g0)
    with pytest.raises(InvalidCandidate, match="not stored"):
        store.record_rescored(job_id, [replace(front[0], key="nope")], owner="runner-a")
    with pytest.raises(LeaseLost):
        store.record_rescored(job_id, rescored, owner="someone-else")


def test_fp_references_are_stored_with_the_front_and_bump_its_version(store: Store) -> None:
    job_id = running_job(store)
    g0 = generation_pairs(0)
    before = store.record_generation(job_id, 0, g0, front_of(g0), 0.5, owner="runner-a")
    assert store.front(job_id).fp_references == () and store.fp_references(job_id) == ()
    points = [
        {"key": "a" * 20, "steps": 2, "timesteps": [90, 50], "bitops": 4e9, "quality": 0.02, "psnr": float("inf")},
        {"key": "b" * 20, "steps": 3, "timesteps": [90, 50, 0], "error": "no result"},
    ]
    after = store.set_fp_references(job_id, points, owner="runner-a")
    assert after.results_version == before.results_version + 1
    stored = store.front(job_id).fp_references
    assert stored == store.fp_references(job_id)
    assert stored[0] == {**points[0], "psnr": None} and stored[1] == points[1]  # JSON has no infinity
    store.set_fp_references(job_id, points[1:], owner="runner-a")  # replaced, not appended
    assert [p["key"] for p in store.fp_references(job_id)] == ["b" * 20]
    with pytest.raises(LeaseLost):
        store.set_fp_references(job_id, points, owner="someone-else")
    with pytest.raises(ConfigError, match="fp_references"):
        store.set_fp_references(job_id, {"key": "x"}, owner="runner-a")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fp_references"):
        store.set_fp_references(job_id, [{"blob": "x" * 300_000}], owner="runner-a")
    with pytest.raises(NotFound):
        store.fp_references(job_id + 99)


def test_bad_generation_is_rolled_back_as_a_whole(store: Store) -> None:
    job_id = running_job(store)
    g0 = generation_pairs(0)
    with pytest.raises(InvalidCandidate, match="not stored"):
        store.record_generation(job_id, 0, g0, ["no-such-key"], 0.5, b"c0", owner="runner-a")
    assert count(store, CandidateModel, job_id=job_id) == 0 and count(store, ObjectiveValueModel) == 0
    assert store.get_job(job_id).generation is None and store.resume_state(job_id) is None
    assert store.hypervolume_history(job_id) == []


def test_nan_metrics_are_stored_as_null(store: Store) -> None:
    job_id = running_job(store)
    c = fake_candidate(0, 9, 0)
    e = Evaluation(c.key(), math.nan, 5.0, 6.0, {"fdd": math.inf, "trace": [1.0, math.nan]})
    store.record_generation(job_id, 0, [(c, e)], [], math.nan, owner="runner-a")
    stored = store.get_candidate(job_id, c.key())
    assert stored.quality is None and not stored.feasible and "not finite" in stored.error
    assert stored.objectives["fdd"] is None and stored.info == {"trace": [1.0, None]}
    assert store.get_job(job_id).hypervolume == 0.0


def test_front_filters_and_sorting(store: Store) -> None:
    job_id = running_job(store)
    pairs = generation_pairs(0, n=40)
    store.record_generation(job_id, 0, pairs, front_of(pairs), 1.0, owner="runner-a")
    front = store.front(job_id)
    assert front.generation == 0 and len(front.points) >= 3
    bitops = [p.bitops for p in front.points]
    assert bitops == sorted(bitops) and all(p.non_dominated and p.feasible for p in front.points)
    limit = bitops[len(bitops) // 2]
    assert [p.bitops for p in store.front(job_id, max_bitops=limit).points] == [b for b in bitops if b <= limit]
    quality = sorted(p.quality for p in front.points)
    by_quality = store.front(job_id, sort="quality", descending=True).points
    assert [p.quality for p in by_quality] == quality[::-1]
    q_limit = quality[1]
    assert all(p.quality <= q_limit for p in store.front(job_id, max_quality=q_limit).points)
    steps = min(p.steps for p in front.points)
    assert {p.key for p in store.front(job_id, max_steps=steps).points} == {
        p.key for p in front.points if p.steps <= steps
    }
    wb = sorted(p.weight_bytes for p in front.points)[0]
    assert all(p.weight_bytes <= wb for p in store.front(job_id, max_weight_bytes=wb).points)
    assert store.front(job_id, max_bitops=0).points == ()
    with pytest.raises(NotFound):
        store.front(999)


def test_runtime_measurements_are_kept_per_backend_in_any_job_state(store: Store) -> None:
    """The latest measurement per backend, on the candidate in every reader; the job's results_version goes up
    with each (cached fronts refresh); a re-recorded generation keeps them; a finished job takes them too."""
    job_id = running_job(store)
    g0 = generation_pairs(0)
    job = store.record_generation(job_id, 0, g0, front_of(g0), 0.5, owner="runner-a")
    key, other = front_of(g0)[:2]
    assert store.get_candidate(job_id, key).runtime is None
    int8 = fake_measurement("cpu-int8", steps=store.get_candidate(job_id, key).steps)
    stored = store.set_runtime(job_id, key, "cpu-int8", int8)
    assert stored.key == key and stored.runtime == {"cpu-int8": int8}
    assert store.get_job(job_id).results_version == job.results_version + 1
    reference = {**fake_measurement("reference", step_ms=30.0), "speedup_per_step": math.nan}  # NaN: stored as null
    store.set_runtime(job_id, key, "reference", reference)
    later = fake_measurement("cpu-int8", step_ms=10.0)
    store.set_runtime(job_id, key, "cpu-int8", later)
    expected = {"cpu-int8": later, "reference": {**reference, "speedup_per_step": None}}
    assert store.get_candidate(job_id, key).runtime == expected
    assert next(p for p in store.front(job_id).points if p.key == key).runtime == expected
    assert next(c for c in store.list_candidates(job_id, limit=100).items if c.key == key).runtime == expected
    assert store.get_candidate(job_id, other).runtime is None  # only the measured candidate
    store.record_generation(job_id, 0, g0, front_of(g0), 0.5, owner="runner-a")  # a resumed driver re-records it
    assert store.get_candidate(job_id, key).runtime == expected
    store.finish_job(job_id, "runner-a", JobState.SUCCEEDED)
    assert store.set_runtime(job_id, other, "cpu-int8", int8).runtime == {"cpu-int8": int8}
    with pytest.raises(NotFound, match="no candidate"):
        store.set_runtime(job_id, "nope", "cpu-int8", int8)
    with pytest.raises(NotFound, match="job 999"):
        store.set_runtime(999, key, "cpu-int8", int8)
    for backend in ("", "x" * 33):
        with pytest.raises(ConfigError, match="backend"):
            store.set_runtime(job_id, key, backend, int8)
    with pytest.raises(ConfigError, match="measurement"):
        store.set_runtime(job_id, key, "cpu-int8", {"machine": "x" * 5000})
    assert store.get_candidate(job_id, key).runtime == expected  # refused ones changed nothing


def test_candidate_pages_with_cursor(store: Store) -> None:
    job_id = running_job(store)
    g0, g1 = generation_pairs(0, n=10), generation_pairs(1, n=10)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.1, owner="runner-a")
    page = store.list_candidates(job_id, limit=4)
    assert page.total == len(g0) and len(page.items) == 4 and page.next_after == page.items[-1].seq
    seen = [c.key for c in page.items]
    while page.next_after is not None:
        page = store.list_candidates(job_id, after=page.next_after, limit=4)
        seen += [c.key for c in page.items]
    assert seen == [c.key() for c, _ in g0]
    last_seq = store.list_candidates(job_id, limit=1000).items[-1].seq
    store.record_generation(job_id, 1, g1, front_of(g0 + g1), 0.2, owner="runner-a")
    increment = store.list_candidates(job_id, after=last_seq)
    assert [c.key for c in increment.items] == [c.key() for c, _ in g1 if c.key() not in set(seen)]
    assert increment.next_after is None
    assert {c.generation for c in store.list_candidates(job_id, generation=1).items} == {1}
    with pytest.raises(NotFound):
        store.get_candidate(job_id, "nope")
    with pytest.raises(NotFound):
        store.list_candidates(4242)


def test_resume_state_returns_what_was_stored(store: Store) -> None:
    job_id = running_job(store)
    assert store.resume_state(job_id) is None
    g0, g1 = generation_pairs(0), generation_pairs(1)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.5, b"c0", owner="runner-a")
    store.record_generation(job_id, 1, g1, front_of(g0 + g1), 0.6, b"c1", owner="runner-a")
    resume = store.resume_state(job_id)
    assert resume.last_generation == 1 and resume.next_generation == 2
    assert resume.checkpoint == b"c1" and resume.checkpoint_generation == 1 and resume.hypervolumes == (0.5, 0.6)
    expected = {c.key(): (c, e) for c, e in g0 + g1}
    assert [c.key() for c, _ in resume.known] == list(expected)
    for c, e in resume.known:
        want = expected[c.key()][1]
        assert c == expected[c.key()][0] and e.to_dict() == want.to_dict()


def test_delete_only_terminal_jobs_and_everything_goes(store: Store) -> None:
    job_id = running_job(store)
    g0 = generation_pairs(0)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.5, b"c0", owner="runner-a")
    keep, _ = store.create_job({**SPEC, "seed": 5})
    with pytest.raises(Conflict, match="RUNNING"):
        store.delete_job(job_id)
    store.finish_job(job_id, "runner-a", JobState.SUCCEEDED)
    store.delete_job(job_id)
    with pytest.raises(NotFound):
        store.get_job(job_id)
    assert count(store, CandidateModel) == 0 and count(store, ObjectiveValueModel) == 0
    assert count(store, HypervolumeModel) == 0 and count(store, JobModel) == 1
    assert store.get_job(keep.id).state is JobState.PENDING


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'tmpq.db'}", busy_timeout_ms=1234)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()
    with pytest.raises(ConfigError, match="in-memory"):
        Store("sqlite://")


def test_session_scope_rolls_back_and_maps_errors(store: Store) -> None:
    job, _ = store.create_job(SPEC, submission_id="dup")
    with pytest.raises(StoreError, match="database error") as info, store.session(write=True) as s:
        s.execute(
            insert(JobModel).values(
                spec_hash="x",
                spec={},
                state="PENDING",
                cancel_requested=False,
                evaluated=0,
                failed=0,
                front_size=0,
                results_version=0,
                attempts=0,
                created_at=job.created_at,
                updated_at=job.created_at,
            )
        )
        s.execute(
            insert(JobModel).values(
                submission_id="dup",
                spec_hash="y",
                spec={},
                state="PENDING",
                cancel_requested=False,
                evaluated=0,
                failed=0,
                front_size=0,
                results_version=0,
                attempts=0,
                created_at=job.created_at,
                updated_at=job.created_at,
            )
        )
    assert info.value.__cause__ is not None
    assert store.list_jobs().total == 1  # the first insert was rolled back with the second
    store.ping()
