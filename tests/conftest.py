"""Shared fixtures: the shipped testbed and its FDD scorer, loaded once per session; and how ``make test`` splits
the suite between its two pytest-xdist workers."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Two workers share two cores, and some tests run two torch threads: OpenMP threads that spin while they wait would
# take the other worker's core. Set before torch is imported (no test module imports it at collection before this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: Test modules that start Ray: ``make test`` runs them on one worker, one Ray at a time.
RAY_MODULES = "tests/workers/test_ray_"
#: The longest modules, longest first (one and a half to three and a half minutes each on the 2-core CI machine,
#: measured 2026-12-07), handed out first so that the workers do not end on one of them while the other idles; only
#: the order changes, and only under xdist. The Ray modules (about three minutes together) go before them.
LONG_MODULES = (
    "tests/workers/test_driver.py",
    "tests/supernet/test_runtime_cpu_int8.py",
    "tests/supernet/test_precision.py",
    "tests/supernet/test_runtime_latency.py",
    "tests/supernet/test_calibration_processes.py",
    "tests/server/test_measure_route.py",
    "tests/workers/test_calibrate_cli.py",
    "tests/supernet/test_restarts.py",
    "tests/workers/test_search_cli.py",
    "tests/supernet/test_calibration_report.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _first(item: pytest.Item) -> int:
    module = _module(item.nodeid)
    if module.startswith(RAY_MODULES):
        return 0
    return 1 + LONG_MODULES.index(module) if module in LONG_MODULES else 1 + len(LONG_MODULES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker (each collects the same list, so the order agrees): the Ray modules and
    :data:`LONG_MODULES` first, otherwise in collection order."""
    if hasattr(config, "workerinput"):
        items.sort(key=_first)


@pytest.hookimpl(optionalhook=True)  # a pytest without xdist (the GPU check's) runs the suite in one process
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile`` (``make test``: two pytest-xdist workers), each test module runs whole on one worker
    (its module fixtures, a calibrated supernet or a live server, are built once), and the modules that start Ray
    all run on the same worker. (xdist's ``loadgroup`` marks were not honoured with pytest 9 here.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would order the modules by their number of tests instead

    class ModulesAndRay(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "ray" if module.startswith(RAY_MODULES) else module

    return ModulesAndRay(config, log)


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
