"""RayConfig validation, the address pre-check and the actor's batch logic — no Ray cluster is started here."""

from __future__ import annotations

import math
import pickle
import socket
import time

import pytest

from search.errors import ConfigError
from search.evaluator import Evaluation, EvaluatorUnavailableError
from workers.actor import EvaluationActor, WorkerContext, evaluate_batch, evaluate_dicts
from workers.pool import RayEvaluator
from workers.ray_config import ADDRESS_ENV, RayConfig
from workers.ray_runtime import RayRuntime, RayUnavailableError, package_dirs, split_address
from workers.ray_testing import ProbeFactory, candidates_for


def test_defaults_are_local_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    cfg = RayConfig()
    assert cfg.local and cfg.address is None
    assert not cfg.include_dashboard
    assert cfg.payload_mode == "path"
    assert cfg.threads == 1
    assert RayConfig(num_cpus=2.5).threads == 2
    assert RayConfig(num_cpus=0.5).threads == 1
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADDRESS_ENV, " 10.1.2.3:6379 ")
    assert RayConfig().address == "10.1.2.3:6379"
    assert RayConfig(address=None).address is None
    monkeypatch.setenv(ADDRESS_ENV, "")
    assert RayConfig().address is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "nohost"),
        ("address", "host:99999"),
        ("address", ""),
        ("num_actors", 0),
        ("num_cpus", -1),
        ("num_cpus", math.nan),
        ("num_gpus", 1.5),
        ("threads_per_actor", 0),
        ("object_store_bytes", 2**20),
        ("max_in_flight_per_actor", 0),
        ("max_retries", -1),
        ("max_retries", True),
        ("payload_mode", "nfs"),
        ("candidates_per_task", 0),
        ("start_timeout_s", 0),
        ("connect_timeout_s", -1.0),
        ("py_modules", "search"),
    ],
)
def test_invalid_settings_name_their_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RayConfig(**{"address": None, field: value})
    assert info.value.field == field


def test_for_job_takes_the_jobs_resources_and_the_operators_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ADDRESS_ENV, "head:6379")
    cfg = RayConfig.for_job({"num_actors": 4, "num_gpus": 0.5, "threads_per_actor": 2, "max_retries": 0})
    assert (cfg.address, cfg.num_actors, cfg.num_gpus, cfg.threads, cfg.max_retries) == ("head:6379", 4, 0.5, 2, 0)
    assert RayConfig.for_job({"task_timeout_s": 5}).task_timeout_s == 5  # a job's timeout works as documented
    assert RayConfig.for_job(None, address="other:1").address == "other:1"
    assert RayConfig.for_job(None, address=None).address is None
    for job, field in (({"num_actors": 0}, "num_actors"), ({"actors": 2}, "actors"), ({"address": "x:1"}, "address")):
        with pytest.raises(ConfigError) as info:
            RayConfig.for_job(job)
        assert info.value.field == field


def test_valid_addresses_and_gpu_fractions() -> None:
    assert RayConfig(address="auto").address == "auto"
    assert RayConfig(address="ray://head.example:10001").address == "ray://head.example:10001"
    assert split_address("ray://head.example:10001") == ("head.example", 10001)
    assert split_address("[::1]:6379") == ("::1", 6379)
    assert split_address("auto") is None
    assert RayConfig(address=None, num_gpus=0.25, num_cpus=0).num_gpus == 0.25
    with pytest.raises(ConfigError):
        RayConfig(address=None, num_gpus=0, num_cpus=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.ray
def test_an_address_without_a_cluster_fails_at_once() -> None:
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(RayUnavailableError) as info:
        RayRuntime(RayConfig(address=address, connect_timeout_s=1.0)).start()
    assert time.monotonic() - start < 3.0
    message = str(info.value)
    assert address in message and "ray start --head" in message and ADDRESS_ENV in message
    assert isinstance(info.value, EvaluatorUnavailableError)
    assert not ray.is_initialized()
    with pytest.raises(RayUnavailableError, match="no Ray cluster answers"):
        RayEvaluator(ProbeFactory(), RayConfig(address=f"ray://{address}", connect_timeout_s=1.0))
    assert time.monotonic() - start < 5.0
    assert not ray.is_initialized()


def test_package_dirs_are_tmpqs_packages() -> None:
    dirs = package_dirs(("tests",))
    assert [d.rsplit("/", 1)[-1] for d in dirs] == ["search", "supernet", "workers", "tests"]


def test_evaluate_batch_records_failures_and_never_raises() -> None:
    cands = candidates_for(5)
    factory = ProbeFactory(raise_keys=frozenset({cands[1].key()}), nan_keys=frozenset({cands[3].key()}))
    evaluator = factory.build(WorkerContext(), None)
    results = evaluate_batch(evaluator, cands)
    assert [e.key for e in results] == [c.key() for c in cands]
    assert [e.ok for e in results] == [True, False, True, False, True]
    assert "asked to fail" in (results[1].error or "")
    assert "not finite" in (results[3].error or "")
    rows = evaluate_dicts(evaluator, [c.to_dict() for c in cands] + [{"version": 99}])
    assert [Evaluation.from_dict(r) for r in rows[:5]] == results
    assert rows[5]["key"] == "invalid:5" and "version" in rows[5]["error"]


def test_the_actor_class_runs_in_process() -> None:
    import torch

    cands = candidates_for(3)
    factory = ProbeFactory()
    threads = torch.get_num_threads()
    try:
        actor = EvaluationActor(factory, slot=0, threads=1, payload=factory.payload())
    finally:
        torch.set_num_threads(threads)
    rows = actor.evaluate([c.to_dict() for c in cands])
    expected = evaluate_batch(factory.build(WorkerContext(), factory.payload()), cands)
    assert [Evaluation.from_dict(r) for r in rows] == expected
    info = actor.info()
    assert info["device"] == "cpu" and info["tasks"] == 1
    assert info["payload_bytes"] == factory.payload_size
