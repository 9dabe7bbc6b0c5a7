"""Shared fixtures: the committed downscaled radiographs always, ../shared/data when present (CI has it).

A test that starts Ray, Serve, a subprocess or Chromium says so itself: `pytestmark = pytest.mark.integration`
at the top of its module, or `@pytest.mark.integration` on the test (`pytest -m "not integration"` is the fast
inner loop; CI runs everything)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA

VERBOSE_ENV = "BONEAGE_VERBOSE"  # boneage.logs.VERBOSE_ENV, without importing the package here


@pytest.fixture(autouse=True)
def _verbose_stays_in_its_test():
    """``setup_logging(True)`` (``--verbose`` in-process) sets $BONEAGE_VERBOSE for the Ray workers it
    starts; put it back after each test, or every later subprocess would log at DEBUG."""
    before = os.environ.get(VERBOSE_ENV)
    yield
    if before is None:
        os.environ.pop(VERBOSE_ENV, None)
    else:
        os.environ[VERBOSE_ENV] = before


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
