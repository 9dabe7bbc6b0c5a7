"""Shared fixtures: the committed downscaled radiographs always, ../shared/data when present (CI has it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "rsna" / "train.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray with 2 CPUs, one per test module (started and stopped around it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()




# Tests that start Ray, Serve, a subprocess or Chromium: `pytest -m "not integration"` is the fast inner
# loop; CI runs everything.
INTEGRATION_MODULES = {"test_cluster", "test_serve", "test_preprocess_job", "test_score_job", "test_train_job",
                       "test_shipped_model", "test_cli", "test_dicomweb", "test_listen", "test_score_inputs"}
INTEGRATION_FIXTURES = {"local_ray", "server", "scored", "calibrated"}
INTEGRATION_TESTS = {"test_preprocess_job_builds_a_cache_with_a_named_preset",
                     "test_bootstrap_then_train_then_use_from_the_command_line"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if (module in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(item.fixturenames)
                or item.originalname in INTEGRATION_TESTS):
            item.add_marker(pytest.mark.integration)
