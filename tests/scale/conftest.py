import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (4 CPUs: two engine actors, two trainer ranks)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
