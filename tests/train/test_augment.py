"""Training augmentation on a real radiograph: resolution augmentation gives the 100 px film's detail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from boneage.train.augment import AugmentConfig, LowResolution, augment_batch, build_augmentation
from boneage.train.loop import TrainConfig
from tests.helpers import FIXTURES, load_grey

NONE = {"rotation_degrees": 0, "translate": 0, "zoom": 0, "contrast": 0, "brightness": 0}


def _film(size: int = 256) -> torch.Tensor:
    film = cv2.resize(load_grey(FIXTURES / "rsna_1377.png"), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(film.astype(np.float32) / 255.0)[None]


def _detail(image: torch.Tensor) -> float:
    """Mean absolute Laplacian: the fine edges a 100 px film lacks."""
    return float(np.abs(cv2.Laplacian(image[0].numpy(), cv2.CV_32F)).mean())


def test_low_resolution_keeps_size_and_grey_levels_but_removes_the_fine_detail():
    film = _film()
    degraded = LowResolution((64, 64))(film)
    assert degraded.shape == film.shape
    assert abs(float(degraded.mean() - film.mean())) < 0.005
    assert _detail(degraded) < _detail(film) / 3
    # the same as sampling the film down to 64 px (area) and back up (bilinear) with OpenCV
    reference = cv2.resize(cv2.resize(film[0].numpy(), (64, 64), interpolation=cv2.INTER_AREA), (256, 256),
                           interpolation=cv2.INTER_LINEAR)
    assert np.abs(degraded[0].numpy() - reference).mean() < 0.002


def test_low_res_is_drawn_per_sample_with_its_chance():
    films = _film(128)[None].repeat(40, 1, 1, 1)
    torch.manual_seed(0)
    out = augment_batch(films, build_augmentation(AugmentConfig(**NONE, low_res=0.5, low_res_sizes=(40, 60))))
    changed = [not torch.equal(o, films[0]) for o in out]
    assert 10 <= sum(changed) <= 30  # about half, each sample its own draw
    untouched = augment_batch(films[:4], build_augmentation(AugmentConfig(**NONE)))
    assert torch.equal(untouched, films[:4])


def test_low_res_options_round_trip_through_json_and_are_checked():
    config = TrainConfig.from_dict({"augment": {"low_res": 0.3, "low_res_sizes": [56, 96]}})
    assert config.augment.low_res_sizes == (56, 96)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="low_res"):
        AugmentConfig(low_res=1.5)
    with pytest.raises(ValueError, match="low_res_sizes"):
        AugmentConfig(low_res_sizes=(96, 56))
