"""Text-to-image candidates evaluated on Ray actors: the conditioning, solver and model files reach the actors, and
their objectives match the in-process evaluator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from supernet.artifact import get_or_build_supernet
from supernet.calibration.settings import CalibrationSettings
from supernet.conditioning import Conditioning
from supernet.identity import artifact_name
from supernet.models import load_model
from supernet.settings import SupernetSettings
from supernet.testing import write_feature_program
from supernet.testing_sd import tiny_sd_pipeline
from workers.evaluator import EvaluatorConfig, InProcessEvaluator
from workers.pool import RayEvaluator
from workers.ray_config import RayConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_ray_actors_evaluate_text_to_image_candidates_like_the_driver(local_ray: Any, tmp_path: Path) -> None:
    root = tiny_sd_pipeline(tmp_path / "sd")
    conditioning = Conditioning(("a red square", "a blue circle"), 2.0, "blurry")
    model = load_model(root, conditioning=conditioning)
    calib = CalibrationSettings.from_dict({"strategy": "range", "grid_steps": 3, "samples": 4, "report_ranking": False})
    supernet = get_or_build_supernet(model, [4, 8], calib_settings=calib, cache_dir=tmp_path / "cache", batch_size=4)
    path = tmp_path / "cache" / artifact_name(model.identity(), [4, 8], SupernetSettings(), calib)
    assert path.is_dir()
    config = EvaluatorConfig(
        model_path=str(root),
        supernet_path=str(path),
        samples=4,
        reference_steps=6,
        batch_size=4,
        threads=1,
        solver="dpmsolver++",
        conditioning=conditioning.to_dict(),
        feature_program=str(write_feature_program(tmp_path / "features.pt2", 3)),  # shipped to the actor as bytes
    )
    candidates = [supernet.uniform(4, 8, (900, 400, 0)), supernet.uniform(8, 8, (900, 500, 200, 0))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actor runs (config.threads): the same kernels, the same rounding
    try:
        local = InProcessEvaluator(model, supernet, config).evaluate(candidates)
    finally:
        torch.set_num_threads(threads)
    with RayEvaluator(config, RayConfig(address=None, num_actors=1, start_timeout_s=120)) as pool:
        remote = pool.evaluate(candidates)
    assert [e.key for e in remote] == [e.key for e in local] and all(e.ok for e in remote)
    for a, b in zip(remote, local, strict=True):
        assert a.quality == b.quality and a.bitops == b.bitops and a.extra["psnr"] == b.extra["psnr"]
        assert a.extra["fd"] == b.extra["fd"] > 0
