"""Shared fixtures: the committed downscaled radiographs always, ../shared/data when present (CI has it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from boneage.train.segmenter import dice  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


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


def load_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image

