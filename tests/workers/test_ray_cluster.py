"""The pool on a multi-node cluster simulated with ``ray.cluster_utils.Cluster``: a search survives a lost node."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from search.runner import GenerationResult, RunnerConfig, SearchRunner
from search.space import SearchSpace
from tests.search.synthetic import make_cost_model
from workers.actor import WorkerContext, evaluate_batch
from workers.pool import RayEvaluator
from workers.ray_config import RayConfig
from workers.ray_testing import ProbeFactory

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SITES = ("down.0.conv", "down.0.attn.qk", "mid.0.conv", "up.0.conv", "up.0.attn.pv", "up.1.conv")


class NodeRemover:
    """Removes the node of a busy actor once the search is past ``after_generation`` (from a thread)."""

    def __init__(self, cluster: Any, pool: RayEvaluator, after_generation: int) -> None:
        self.cluster, self.pool, self.after = cluster, pool, after_generation
        self.generations_done = 0
        self.removed_during: int | None = None
        self.removed_node: str | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def on_generation(self, report: GenerationResult) -> None:
        self.generations_done = report.generation + 1

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=10)

    def _watch(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.removed_node is None:
            if self.generations_done >= self.after:
                busy = [s for s in self.pool.slots() if s.ready and s.in_flight > 0]
                if busy:
                    self._remove(busy[0].info["node_id"])
                    return
            time.sleep(0.01)

    def _remove(self, node_id: str) -> None:
        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        self.removed_during = self.generations_done  # the generation being evaluated now
        self.removed_node = node_id
        self.cluster.remove_node(node)


@pytest.mark.timeout(240)
def test_a_search_completes_when_a_node_is_removed_mid_generation(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray puts the driver's working directory on local workers' path; start elsewhere so that the actors can only
    # get tmpq's code the way a remote node does: from the job's runtime environment (py_modules).
    monkeypatch.chdir(tmp_path)
    space = SearchSpace(1000, (3, 4), SITES, (4, 6, 8))
    cost_model = make_cost_model(SITES)
    factory = ProbeFactory(sleep_s=0.1).priced_by(cost_model)
    config = RayConfig(address=ray_cluster.address, num_actors=2, max_retries=2, start_timeout_s=120)
    reports: list[GenerationResult] = []
    with RayEvaluator(factory, config) as pool:
        assert pool.runtime.joined
        states = pool.wait_ready()
        workers = {n.node_id for n in ray_cluster.worker_nodes}
        assert {s.info["node_id"] for s in states} == workers  # spread: one actor per worker node
        assert all("runtime_resources" in s.info["code"] for s in states), [s.info["code"] for s in states]
        remover = NodeRemover(ray_cluster, pool, after_generation=1)
        remover.start()
        runner = SearchRunner(
            RunnerConfig(algorithm="nsga2", population=12, generations=4, seed=0), space, pool, cost_model
        )
        result = runner.run(on_generation=lambda r: (reports.append(r), remover.on_generation(r)))
        remover.join()
        stats = pool.stats()
        survivors = pool.wait_ready(timeout_s=60)

    assert remover.removed_node is not None and 1 <= (remover.removed_during or 0) < 4
    assert result.generations == 4 and result.stopped == "generations"
    evaluated = [e for r in reports for e in r.evaluations]
    keys = Counter(e.key for e in evaluated)
    assert max(keys.values()) == 1 and len(keys) == result.evaluated
    assert all(e.ok for e in evaluated) and result.failed == 0
    assert set(stats.attempts) == set(keys)  # every evaluated candidate went through the pool
    assert any(n > 1 for n in stats.attempts.values())  # some ran twice (lost with the node), counted once
    assert stats.replaced >= 1
    assert {s.info["node_id"] for s in survivors} == workers - {remover.removed_node}
    # Values equal the in-process evaluation, whichever node (or attempt) produced them.
    candidates = {k: c for r in reports for k, c in r.candidates.items()}
    local = evaluate_batch(factory.build(WorkerContext(), None), [candidates[e.key] for e in evaluated])
    assert [e.quality for e in evaluated] == [e.quality for e in local]
