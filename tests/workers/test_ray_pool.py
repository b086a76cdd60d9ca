"""The Ray pool on a real local Ray: identity with the in-process path, order, backpressure, faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from search.candidate import Candidate
from search.evaluator import Evaluation, Evaluator, EvaluatorUnavailableError
from workers.actor import Payload, WorkerContext, evaluate_batch
from workers.pool import RayEvaluator
from workers.ray_config import RayConfig
from workers.ray_testing import ProbeFactory, candidates_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CRASH, RAISE, NAN = candidates_for(3, seed=99)
PROBE = ProbeFactory(
    sleep_s=0.1,
    crash_keys=frozenset({CRASH.key()}),
    raise_keys=frozenset({RAISE.key()}),
    nan_keys=frozenset({NAN.key()}),
)
POOL_CONFIG = RayConfig(address=None, num_actors=2, max_retries=1, payload_mode="object_store", start_timeout_s=120)


def in_process(factory: ProbeFactory, candidates: list[Candidate], payload: Payload | None) -> list[Evaluation]:
    return evaluate_batch(factory.build(WorkerContext(threads=1), payload), candidates)


@pytest.fixture(scope="module")
def pool(local_ray: Any) -> Iterator[RayEvaluator]:
    """Two probe actors sharing one object-store payload."""
    with RayEvaluator(PROBE, POOL_CONFIG) as evaluator:
        evaluator.wait_ready()
        yield evaluator
    assert local_ray.started  # the pool joined the module's Ray and left it running


@pytest.mark.timeout(60)
def test_results_are_bit_identical_to_the_in_process_evaluator(pool: RayEvaluator) -> None:
    cands = candidates_for(8, seed=1)
    assert isinstance(pool, Evaluator)
    results = pool.evaluate(cands)
    assert results == in_process(PROBE, cands, PROBE.payload())  # exact floats, extras, errors
    assert all(e.ok and e.extra["payload"] for e in results)
    slots = pool.slots()
    assert len({s.info["pid"] for s in slots}) == 2
    assert all(s.info["device"] == "cpu" and s.info["threads"] == 1 for s in slots)
    assert all(s.info["payload_bytes"] == PROBE.payload_size for s in slots)
    assert pool.stats().payload_puts == 1


@pytest.mark.timeout(60)
def test_results_come_in_candidate_order_and_a_repeated_key_runs_once(pool: RayEvaluator) -> None:
    cands = candidates_for(6, seed=2)
    asked = [*reversed(cands), cands[2], cands[0]]
    before = pool.stats().attempts
    results = pool.evaluate(asked)
    assert [e.key for e in results] == [c.key() for c in asked]
    assert results[-2] == results[3] and results[-1] == results[5]
    after = pool.stats().attempts
    assert all(after[c.key()] - before.get(c.key(), 0) == 1 for c in cands)


@pytest.mark.timeout(60)
def test_every_actor_is_kept_busy_within_the_in_flight_bound(pool: RayEvaluator) -> None:
    before = [s.tasks for s in pool.slots()]
    pool.evaluate(candidates_for(12, seed=3))
    after = pool.slots()
    per_slot = [s.tasks - b for s, b in zip(after, before, strict=True)]
    assert sum(per_slot) == 12 and min(per_slot) >= 2  # both actors got work from the start
    assert pool.stats().peak_in_flight == POOL_CONFIG.max_in_flight_per_actor  # pipelined, never above the bound
    assert all(s.in_flight == 0 for s in after)


@pytest.mark.timeout(60)
def test_raising_and_nan_candidates_are_recorded_as_failed_and_the_rest_go_on(pool: RayEvaluator) -> None:
    good = candidates_for(3, seed=4)
    replaced = pool.stats().replaced
    results = pool.evaluate([good[0], RAISE, good[1], NAN, good[2]])
    assert [e.ok for e in results] == [True, False, True, False, True]
    assert "RuntimeError" in (results[1].error or "") and "asked to fail" in (results[1].error or "")
    assert "not finite" in (results[3].error or "")
    stats = pool.stats()
    assert stats.attempts[RAISE.key()] == 1 and stats.attempts[NAN.key()] == 1  # failures are not retried
    assert stats.replaced == replaced
    assert [results[i] for i in (0, 2, 4)] == in_process(PROBE, good, PROBE.payload())


@pytest.mark.timeout(120)
def test_a_candidate_that_kills_its_worker_is_retried_a_bounded_number_of_times(pool: RayEvaluator) -> None:
    before = pool.stats()
    (result,) = pool.evaluate([CRASH])
    assert not result.ok
    assert f"lost {POOL_CONFIG.max_retries + 1} times" in (result.error or "")
    assert "Actor" in (result.error or "")
    stats = pool.stats()
    assert stats.attempts[CRASH.key()] == POOL_CONFIG.max_retries + 1
    assert stats.replaced - before.replaced == POOL_CONFIG.max_retries + 1
    assert stats.payload_puts == 1  # the replacements got the same object-store payload
    cands = candidates_for(4, seed=5)
    assert pool.evaluate(cands) == in_process(PROBE, cands, PROBE.payload())


@pytest.mark.timeout(120)
def test_a_hung_evaluation_is_killed_after_the_task_timeout_and_retried_a_bounded_number_of_times(
    local_ray: Any,
) -> None:
    hang, *rest = candidates_for(4, seed=10)
    factory = ProbeFactory(hang_keys=frozenset({hang.key()}))
    config = RayConfig(address=None, num_actors=1, max_retries=1, task_timeout_s=3, start_timeout_s=60)
    with RayEvaluator(factory, config) as evaluator:
        evaluator.wait_ready()
        start = time.monotonic()
        results = evaluator.evaluate([hang, *rest])
        elapsed = time.monotonic() - start
        stats = evaluator.stats()
    assert not results[0].ok and "ran past task_timeout_s=3 s" in (results[0].error or "")
    assert "lost 2 times" in (results[0].error or "")
    assert results[1:] == in_process(factory, rest, None)  # the candidates queued behind it are not lost
    assert stats.attempts[hang.key()] == 2 and stats.replaced == 2 and stats.failed == 1
    assert elapsed >= 2 * config.task_timeout_s  # each attempt was given its full time


def kill_when_busy(pool: RayEvaluator, slot: int, killed: list[int], timeout_s: float = 30.0) -> threading.Thread:
    """A thread that ``ray.kill``s the actor of ``slot`` once it holds a task."""
    import ray

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = pool.slots()[slot]
            if state.ready and state.in_flight > 0:
                ray.kill(pool.actors()[slot])
                killed.append(state.generation)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(120)
def test_an_actor_killed_mid_batch_is_replaced_and_its_candidates_requeued(pool: RayEvaluator) -> None:
    pool.wait_ready()
    generation = pool.slots()[0].generation
    before = pool.stats()
    cands = candidates_for(10, seed=6)
    killed: list[int] = []
    watcher = kill_when_busy(pool, 0, killed)
    results = pool.evaluate(cands)
    watcher.join(timeout=5)
    assert killed == [generation]
    assert results == in_process(PROBE, cands, PROBE.payload())  # each exactly once, same values
    stats = pool.stats()
    assert stats.replaced == before.replaced + 1
    assert stats.lost_tasks > before.lost_tasks
    rerun = [c.key() for c in cands if stats.attempts[c.key()] == 2]
    assert rerun and all(stats.attempts[c.key()] in (1, 2) for c in cands)
    states = pool.wait_ready()
    assert states[0].generation == generation + 1
    assert states[0].info["payload_bytes"] == PROBE.payload_size


@pytest.mark.timeout(90)
def test_path_mode_ships_no_payload_and_tasks_can_carry_several_candidates(local_ray: Any) -> None:
    factory = ProbeFactory()
    cands = candidates_for(4, seed=7)
    config = RayConfig(address=None, num_actors=1, payload_mode="path", candidates_per_task=3)
    with RayEvaluator(factory, config) as evaluator:
        results = evaluator.evaluate(cands)
        stats = evaluator.stats()
        assert stats.payload_puts == 0 and stats.tasks == 2
        assert evaluator.slots()[0].info["payload_bytes"] == 0
    assert results == in_process(factory, cands, None)
    assert all(e.extra["payload"] is None for e in results)
    with pytest.raises(EvaluatorUnavailableError, match="closed"):
        evaluator.evaluate(cands)


@dataclass(frozen=True)
class BrokenFactory:
    """An evaluator factory whose build fails (e.g. a model path no worker can read)."""

    path: str = "/nonexistent/model"

    def payload(self) -> Payload:
        return {}

    def build(self, context: WorkerContext, payload: Payload | None) -> Any:
        raise FileNotFoundError(self.path)


@pytest.mark.timeout(90)
def test_an_actor_that_cannot_build_its_evaluator_makes_the_pool_unavailable(local_ray: Any) -> None:
    with (
        RayEvaluator(BrokenFactory(), RayConfig(address=None, num_actors=1)) as evaluator,
        pytest.raises(EvaluatorUnavailableError, match="/nonexistent/model"),
    ):
        evaluator.evaluate(candidates_for(2, seed=8))


@pytest.mark.timeout(60)
def test_a_cluster_without_room_for_any_actor_fails_after_the_start_timeout(local_ray: Any) -> None:
    config = RayConfig(address=None, num_actors=1, num_cpus=64, start_timeout_s=2)
    with RayEvaluator(ProbeFactory(), config) as evaluator:
        start = time.monotonic()
        with pytest.raises(EvaluatorUnavailableError, match="0 of 1 evaluation actors ready") as info:
            evaluator.evaluate(candidates_for(1, seed=9))
        assert time.monotonic() - start < 10
        assert "num_cpus=64" in str(info.value)


# -- the supernet evaluator itself -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluator_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An ``EvaluatorConfig`` on the shipped testbed (a random-weight copy of its architecture until it ships) and
    a small supernet artifact from the cache API."""
    import torch

    from supernet.artifact import META_FILE, get_or_build_supernet
    from supernet.calibration.settings import CalibrationSettings
    from supernet.zoo.loader import load_model
    from supernet.zoo.testbed import TESTBED_DIR, testbed_scheduler, testbed_unet
    from workers.evaluator import EvaluatorConfig

    root = tmp_path_factory.mktemp("supernet")
    model_dir = TESTBED_DIR
    if not (TESTBED_DIR / "model_index.json").exists():
        from diffusers import DDPMPipeline

        model_dir = root / "model"
        DDPMPipeline(unet=testbed_unet(0), scheduler=testbed_scheduler()).save_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calib = CalibrationSettings(
            strategy="range",
            grid_steps=4,
            samples=8,
            weight_method="minmax",
            act_method="minmax",
            report_ranking=False,
        )
        get_or_build_supernet(load_model(model_dir), (4, 8), None, calib, root / "cache", batch_size=8)
    finally:
        torch.set_num_threads(threads)
    (artifact,) = [p for p in (root / "cache").iterdir() if (p / META_FILE).exists()]
    return EvaluatorConfig(
        str(model_dir), str(artifact), samples=4, seed=3, reference_steps=10, batch_size=4, threads=1
    )


def _comparable(e: Evaluation) -> tuple[Any, ...]:
    extra = {k: v for k, v in e.extra.items() if k != "seconds"}
    return (e.key, e.quality, e.bitops, e.weight_bytes, extra, e.error)


@pytest.mark.timeout(180)
def test_the_supernet_evaluator_gives_bit_identical_results_on_an_actor(local_ray: Any, evaluator_config: Any) -> None:
    import torch

    from supernet.artifact import read_metadata
    from workers.actor import InProcessFactory
    from workers.evaluator import InProcessEvaluator

    sites = read_metadata(evaluator_config.supernet_path)["sites"]
    cands = [
        Candidate.uniform((900, 600, 300, 0), sites, 8, 8),
        Candidate.uniform((800, 400, 100), sites, 4, 8),
        Candidate.from_maps(
            (950, 500, 200, 50, 0), {s: (4, 8)[i % 2] for i, s in enumerate(sites)}, {s: 8 for s in sites}
        ),
    ]
    threads = torch.get_num_threads()
    try:
        local = InProcessEvaluator.from_config(evaluator_config).evaluate(cands)
    finally:
        torch.set_num_threads(threads)
    assert all(e.ok for e in local)
    config = RayConfig(address=None, num_actors=1, payload_mode="object_store")
    with RayEvaluator(evaluator_config, config) as pool:  # a bare EvaluatorConfig means InProcessFactory(config)
        assert isinstance(pool.factory, InProcessFactory)
        remote = pool.evaluate(cands)
        assert pool.slots()[0].info["payload_bytes"] > 1_000_000  # model and supernet went by the object store
    assert [_comparable(e) for e in remote] == [_comparable(e) for e in local]
