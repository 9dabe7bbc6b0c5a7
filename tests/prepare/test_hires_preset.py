"""The high-resolution preset: one film at full size and at half size gives the same model input, and a
washed-out film reaches the model with the grey range of a well-exposed one."""

from __future__ import annotations

import cv2
import numpy as np

from boneage.files.images import read_image
from boneage.prepare.stages import PRESETS, PreprocessConfig, percentile_stretch, preprocess


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / (a | b).sum())


def test_a_half_resolution_film_and_its_full_size_original_give_crops_that_agree(shared_data):
    # rsna-half was made with cv2.INTER_AREA halving (checked on this very film): make it the same way
    full = read_image(str(shared_data / "rsna" / "train" / "1377.png")).pixels
    half = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)
    a, b = preprocess(full, PRESETS["hires"]), preprocess(half, PRESETS["hires"])
    assert a.image.shape == b.image.shape == (256, 256)
    assert not a.findings and not b.findings
    assert _mask_iou(a.image, b.image) > 0.95  # the same hand, framed the same way
    inside = (a.image > 0) & (b.image > 0)
    assert np.abs(a.image[inside].astype(int) - b.image[inside].astype(int)).mean() < 6  # grey levels of 0..255


def test_the_hires_crop_is_the_hand_not_the_film(shared_data):
    """The crop holds the hand whose mask exists (rsna/masks/1377.png): most of the box is hand."""
    full = read_image(str(shared_data / "rsna" / "train" / "1377.png")).pixels
    mask = cv2.imread(str(shared_data / "rsna" / "masks" / "1377.png"), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(mask)
    out = preprocess(full, PRESETS["hires"]).image
    assert 0.3 < (out > 0).mean() < 0.9  # hand and a dilated margin, black beyond
    assert (ys.max() - ys.min()) / full.shape[0] > 0.5  # sanity of the reference mask itself


def test_percentile_stretch_gives_a_washed_out_hand_the_full_grey_range():
    rng = np.random.default_rng(0)
    image = rng.integers(120, 160, size=(64, 64), dtype=np.uint8)  # a dim, low-contrast "hand"
    mask = np.zeros_like(image)
    mask[8:56, 8:56] = 255
    out = percentile_stretch(image, mask, (1.0, 99.0))
    inside = out[mask > 0]
    assert inside.min() <= 3 and inside.max() >= 252
    assert np.array_equal(percentile_stretch(image, np.zeros_like(mask), (1.0, 99.0)), image)


def test_the_normalisation_is_saved_in_the_config_and_changes_its_hash():
    hires = PRESETS["hires"]
    again = PreprocessConfig.from_dict(hires.to_dict())
    assert again == hires and again.config_hash() == hires.config_hash()
    assert PreprocessConfig(normalise="percentile").config_hash() != PreprocessConfig().config_hash()
    # (the older presets' hashes are pinned in tests/network/test_backbones_domain.py)
