"""Ray actors holding a fraction of a GPU (``gpu`` marker; skipped where torch sees no CUDA device)."""

from __future__ import annotations

from typing import Any

import pytest

from supernet.artifact import SHIPPED_DIR
from supernet.models import TESTBED_DIR
from workers.evaluator import EvaluatorConfig, InProcessEvaluator
from workers.pool import RayEvaluator
from workers.ray_config import RayConfig

pytestmark = [pytest.mark.gpu, pytest.mark.ray, pytest.mark.slow]

pytest.importorskip("ray", reason="Ray is not installed (the device machine's image may lack it)")


@pytest.mark.timeout(600)
def test_two_actors_share_one_gpu_and_score_like_the_driver_on_cuda(cuda: str, local_ray: Any) -> None:
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    config = EvaluatorConfig(
        model_path=str(TESTBED_DIR), supernet_path=str(shipped), samples=16, reference_steps=20, device=cuda
    )
    local = InProcessEvaluator.from_config(config)
    schedule = (999, 799, 599, 399, 199, 0)
    candidates = [local.supernet.uniform(b, a, schedule) for b, a in ((8, 8), (6, 6), (4, 8), (4, 4))]
    expected = local.evaluate(candidates)
    ray_config = RayConfig(address=None, num_actors=2, num_cpus=1, num_gpus=0.5, start_timeout_s=300)
    with RayEvaluator(config, ray_config) as pool:
        remote = pool.evaluate(candidates)
        devices = [info["device"] for info in pool.actor_infos()]
        assert pool.stats().ready == 2  # two actors of half a GPU each on a one-GPU machine
    assert len(devices) == 2 and all(d.startswith("cuda") for d in devices)
    for r, e in zip(remote, expected, strict=True):
        assert r.ok and r.key == e.key and r.bitops == e.bitops
        assert r.quality == pytest.approx(e.quality, rel=1e-3)
