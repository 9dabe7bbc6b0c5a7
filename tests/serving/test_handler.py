"""The plain request handler under the Serve app (``BoneAgeService``), in-process and without Ray: each
client mistake is its own status and code, and a refused film is an answer, not an error."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from boneage.predict.predictor import Predictor, untrained_checkpoint
from boneage.serving.handler import BoneAgeService, Limits, RequestError
from tests.helpers import FIXTURES, load_grey, make_dicom

HAND = (FIXTURES / "rsna_1377.png").read_bytes()


@pytest.fixture(scope="module")
def service() -> BoneAgeService:
    return BoneAgeService(Predictor(untrained_checkpoint(), device="cpu"), Limits(max_upload_bytes=2_000_000,
                                                                                  max_pixels=4_000_000))


def _png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


@pytest.mark.parametrize(("data", "sex", "age", "status", "code"), [
    (HAND, "X", None, 400, "bad_sex"),
    (HAND, None, None, 400, "missing_sex"),
    (HAND, "F", float("nan"), 400, "bad_age"),
    (b"", "F", None, 400, "empty"),
    (HAND[: len(HAND) // 2], "F", None, 422, "truncated"),
    (b"plain text, not an image\n" * 10, "F", None, 415, "unsupported_format"),
    (make_dicom(load_grey(FIXTURES / "rsna_1377.png"), with_pixels=False), "F", None, 422, "no_pixels"),
    (b"\x00" * 2_000_001, "F", None, 413, "too_large"),
    (_png(np.zeros((2100, 2000), np.uint8)), "F", None, 413, "too_large"),
], ids=["bad_sex", "missing_sex", "bad_age", "empty", "truncated", "not_an_image", "no_pixels", "big_file",
        "too_many_pixels"])
def test_each_client_mistake_has_its_own_status(service, data, sex, age, status, code):
    with pytest.raises(RequestError) as caught:
        service.prepare(data, sex, age, name="upload.dcm" if code == "no_pixels" else "upload")
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.to_dict()


def test_a_good_film_and_a_refused_one_are_both_answers(service):
    body = service.predict_one(HAND, "M", 120.0)
    assert body["quality"]["verdict"] == "ok" and isinstance(body["bone_age_months"], float)
    assert "untrained" in body["warning"]
    noise = _png(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8))
    refused = service.predict_one(noise, "F")
    assert refused["quality"]["verdict"] == "refused" and refused["bone_age_months"] is None
    anyway = service.predict_one(noise, "F", score_anyway=True)
    assert isinstance(anyway["bone_age_months"], float)
