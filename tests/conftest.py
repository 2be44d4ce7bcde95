import os

import pytest

# Ray in tests: keep workers few and quiet, never reach out for usage stats.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    from minisigma.core.runner import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    info = ensure_ray(None, num_cpus=2)
    yield info
    ray.shutdown()


@pytest.fixture
def two_node_cluster():
    """A two-node Ray cluster on this machine (`ray.cluster_utils`, one CPU per node), this process
    connected to it as the driver. A local Ray this session had started is started again afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    was = ray.is_initialized()
    if was:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was:
            from minisigma.core.runner import ensure_ray

            ensure_ray(None, num_cpus=2)
