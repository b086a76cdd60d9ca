"""Shared fixtures: the shipped testbed and its FDD scorer, loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def testbed_model():
    """The shipped digits DDPM (do not mutate it; copy.deepcopy(model.unet) to change weights)."""
    import torch

    from supernet.zoo.loader import load_model
    from supernet.zoo.testbed import TESTBED_DIR

    torch.set_num_threads(2)
    return load_model(TESTBED_DIR)


@pytest.fixture(scope="session")
def fdd_scorer():
    """FDD against the real digits with the shipped classifier."""
    from supernet.metrics import FDDScorer

    return FDDScorer.for_testbed()


@pytest.fixture(scope="session")
def cuda() -> str:
    """``"cuda"`` when torch sees a GPU; otherwise the test is skipped, saying why (``gpu``-marked tests)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return "cuda"
