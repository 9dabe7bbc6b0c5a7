"""The seed's stages on real radiographs: mask quality, markers removed, each stage's effect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from boneage.files.images import read_image
from boneage.prepare.stages import (
    PreprocessConfig,
    apply_mask,
    clahe,
    contrast_score,
    dilate_mask,
    fill_contours,
    hand_mask,
    laplacian_sharpen,
    pad_to_square,
    preprocess,
    to_unit_float,
)
from tests.helpers import FIXTURES, dice, load_grey


def test_mask_of_1377_matches_real_mask_fixture():
    image = load_grey(FIXTURES / "rsna_1377.png")
    reference = load_grey(FIXTURES / "rsna_1377_mask.png")
    found = hand_mask(image, PreprocessConfig())
    assert found.findings == {}
    assert dice(found.mask, reference) >= 0.9


def test_mask_of_1377_full_resolution(shared_data):
    image = read_image(str(shared_data / "rsna" / "train" / "1377.png")).pixels
    reference = load_grey(shared_data / "rsna" / "masks" / "1377.png")
    assert dice(hand_mask(image, PreprocessConfig()).mask, reference) >= 0.9


# Boxes (x0, y0, x1, y1) around burned-in side markers, read off the fixtures by eye.
MARKERS = {"rsna_1377.png": (30, 20, 65, 60), "rsna_7047.png": (8, 310, 60, 385)}


@pytest.mark.parametrize("name", sorted(MARKERS))
def test_burned_in_letters_are_removed(name):
    image = load_grey(FIXTURES / name)
    x0, y0, x1, y1 = MARKERS[name]
    assert image[y0:y1, x0:x1].max() > 200, "the fixture should show a bright marker there"
    found = hand_mask(image, PreprocessConfig())
    assert found.mask[y0:y1, x0:x1].max() == 0
    assert apply_mask(image, found.mask)[y0:y1, x0:x1].max() == 0
    assert 0.2 < found.hand_fraction < 0.7


def test_output_shape_range_and_black_background():
    result = preprocess(load_grey(FIXTURES / "rsna_7047.png"))
    assert result.image.shape == (384, 384) and result.image.dtype == np.uint8
    unit = to_unit_float(result.image)
    assert unit.dtype == np.float32 and 0.0 <= unit.min() and unit.max() <= 1.0
    assert result.image[0].max() == 0 and result.image[:, 0].max() == 0  # padding and masked background
    assert result.config_hash == PreprocessConfig().config_hash()


def test_low_contrast_is_a_warning_not_a_refusal():
    low = preprocess(load_grey(FIXTURES / "rsna_3107_low_contrast.png"))
    assert list(low.findings) == ["low_contrast"] and "below" in low.findings["low_contrast"]
    assert not low.refused and low.rejection is None and low.quality_flags()["verdict"] == "warning"
    assert low.image.shape == (384, 384)
    good = preprocess(load_grey(FIXTURES / "rsna_1377.png"))
    assert good.findings == {} and good.contrast > 0.5 and good.quality_flags()["verdict"] == "ok"


def test_contour_fill_closes_holes_and_dilation_grows_by_half_kernel():
    ring = np.zeros((100, 100), np.uint8)
    cv2.circle(ring, (50, 50), 30, 255, thickness=6)
    filled = fill_contours(ring)
    assert filled[50, 50] == 255 and np.count_nonzero(filled) > np.count_nonzero(ring)
    square = np.zeros((100, 100), np.uint8)
    square[40:60, 40:60] = 255
    grown = dilate_mask(square, 11)
    ys, xs = np.nonzero(grown)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (35, 64, 35, 64)


def test_clahe_and_sharpening_change_the_image_as_the_seed_describes():
    image = load_grey(FIXTURES / "rsna_1377.png")
    enhanced = clahe(image, 3.0, 8)
    assert enhanced.std() > image.std()  # local contrast raised
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(image)
    assert np.array_equal(enhanced, expected)
    sharp = laplacian_sharpen(enhanced)
    edges = lambda x: np.abs(cv2.Laplacian(x, cv2.CV_32F)).mean()  # noqa: E731
    assert edges(sharp) > 1.5 * edges(enhanced)
    flat = np.full((50, 50), 100, np.uint8)
    assert np.array_equal(laplacian_sharpen(flat), flat)  # nothing to sharpen on a flat image


def test_pad_to_square_keeps_proportions():
    tall = np.full((300, 100), 200, np.uint8)
    square = pad_to_square(tall)
    assert square.shape == (300, 300)
    assert np.count_nonzero(square) == 300 * 100
    assert square[:, 100:200].min() == 200


def test_contrast_score_orders_images():
    image = load_grey(FIXTURES / "rsna_1377.png")
    washed = (image.astype(np.float32) * 0.1 + 100).astype(np.uint8)
    assert contrast_score(washed) < PreprocessConfig().min_contrast < contrast_score(image)


def test_config_round_trip_and_unknown_keys():
    config = PreprocessConfig(clahe_clip_limit=2.0)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert config.config_hash() != PreprocessConfig().config_hash()
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"bogus": 1})


def test_large_radiograph_is_processed(shared_data):
    """Every real training image gets a usable result: mask found, not refused."""
    paths = sorted((shared_data / "rsna" / "train").glob("*.png"))
    rejected = [p.name for p in paths if preprocess(read_image(str(p)).pixels).refused]
    assert len(paths) == 52
    assert len(rejected) <= 1, rejected


def test_a_jpeg_film_is_decoded_reduced_only_when_the_config_asks(shared_data, tmp_path):
    """``reduced_decode`` (off in the presets) makes the one read path decode a JPEG at a fraction of its
    size; off, a JPEG is read in full, so its bone age is exactly the full decode's."""
    import dataclasses

    from boneage.files.images import decode_image
    from boneage.predict.predictor import prepare_file
    from boneage.prepare.stages import PRESETS, preprocess

    film = cv2.imread(str(shared_data / "rsna" / "val" / "1392.png"), cv2.IMREAD_GRAYSCALE)
    path = tmp_path / "1392.jpg"
    path.write_bytes(cv2.imencode(".jpg", film, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    shipped = PRESETS["rsna100"]
    assert shipped.decode_min_side is None
    full = decode_image(path.read_bytes(), str(path)).pixels
    np.testing.assert_array_equal(prepare_file(str(path), shipped, "M").image, preprocess(full, shipped).image)
    reduced_config = dataclasses.replace(shipped, reduced_decode=True)
    reduced = decode_image(path.read_bytes(), str(path), min_side=reduced_config.decode_min_side).pixels
    assert min(reduced.shape) >= 200 and reduced.size * 4 <= full.size
    np.testing.assert_array_equal(prepare_file(str(path), reduced_config, "M").image,
                                  preprocess(reduced, reduced_config).image)
    with pytest.raises(ValueError, match="domain"):
        dataclasses.replace(PRESETS["seed"], reduced_decode=True)
