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
