"""Ray fixtures: one local Ray per test module, and a simulated multi-node cluster.

Ray binds every interface and talks to the machine's non-loopback address; on machines that only allow loopback
traffic run these tests in a private network namespace::

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest tests/workers -q'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: Object store of every Ray started by the tests (Ray's minimum is 75 MiB).
OBJECT_STORE_BYTES = 80 * 2**20


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray for the whole module (pools created in it join it and leave it running).

    4 logical CPUs on any machine, so a test's own pool fits beside the module's shared one.
    """
    import ray

    from workers.ray_config import RayConfig
    from workers.ray_runtime import RayRuntime

    assert not ray.is_initialized(), "a previous module left Ray connected"
    with RayRuntime(RayConfig(address=None, local_num_cpus=4, object_store_bytes=OBJECT_STORE_BYTES)) as runtime:
        assert runtime.started
        yield runtime
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """``ray.cluster_utils.Cluster``: a head with no CPUs (the driver's) and two 2-CPU worker nodes, not connected.

    Tests connect to ``cluster.address`` themselves (through ``RayConfig(address=...)``).
    """
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "a previous module left Ray connected"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": OBJECT_STORE_BYTES, "include_dashboard": False},
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
