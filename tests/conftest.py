"""Shared fixtures: the committed downscaled radiographs always, ../shared/data when present (CI has it).

A test that starts Ray, Serve, a subprocess or Chromium says so itself: `pytestmark = pytest.mark.integration`
at the top of its module, or `@pytest.mark.integration` on the test (`pytest -m "not integration"` is the fast
inner loop; CI runs everything)."""

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
