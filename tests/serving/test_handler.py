"""The plain request handler under the Serve app (``BoneAgeService``), in-process and without Ray: each
client mistake is its own status and code, and a refused film is an answer, not an error."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from boneage.cli import main
from boneage.clinical import RESEARCH_USE_ONLY
from boneage.clinical.intervals import DEFAULT_BANDS, METHOD_ABSOLUTE, Calibration, band_names
from boneage.clinical.reference import load_reference, sds_text
from boneage.network.checkpoint import save_checkpoint
from boneage.predict.predictor import Predictor, untrained_checkpoint
from boneage.predict.structured_report import build_report, read_report
from boneage.serving.handler import BoneAgeService, Limits, RequestError
from boneage.serving.webpage import INDEX_HTML
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


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory) -> str:
    """An untrained network whose calibration recalibrates every film to 100 months (slope 0), with a
    +-10-month interval in the 60-120 band: the clinical outputs on numbers known in advance."""
    checkpoint = untrained_checkpoint()
    bands = [{"band": name, "n": 50, "q": q, "pooled": False}
             for name, q in zip(band_names(DEFAULT_BANDS), (5.0, 10.0, 15.0, 20.0), strict=True)]
    calibration = Calibration(method=METHOD_ABSOLUTE, level=0.9, q=12.0, eps=0.0, tta=0, n=200, data="constructed",
                              band_edges=list(DEFAULT_BANDS), bands=bands, recalibrate=[0.0, 100.0])
    path = tmp_path_factory.mktemp("calibrated") / "model.pt"
    save_checkpoint(str(path), checkpoint.model, checkpoint.preprocess, {"calibration": calibration.to_dict()})
    return str(path)


@pytest.mark.parametrize(("age", "category"), [(150.0, "delayed"), (120.0, "indeterminate"), (100.0, "average")])
def test_the_same_sds_range_and_category_reach_the_json_the_endpoint_and_the_sr(calibrated_model, tmp_path, capsys,
                                                                                  age, category):
    reference = load_reference()
    sd = reference.sd(age, "F")
    expected = {"bone_age_months": 100.0, "bone_age_interval_low": 90.0, "bone_age_interval_high": 110.0,
                "sds": round((100 - age) / sd, 3), "sds_low": round((90 - age) / sd, 3),
                "sds_high": round((110 - age) / sd, 3), "maturity_category": category}
    # at 150 months the whole range is below -2; at 120 it straddles -2; at 100 it lies within [-2, +2]
    body = BoneAgeService(Predictor.load(calibrated_model, device="cpu")).predict_one(HAND, "F", age)
    assert {key: body[key] for key in expected} == pytest.approx(expected)
    assert body["notice"] == RESEARCH_USE_ONLY

    film = tmp_path / "hand.dcm"
    film.write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), sex="F", StudyInstanceUID=generate_uid(),
                                SeriesInstanceUID=generate_uid()))
    assert main(["predict", str(film), "--json", "--model", calibrated_model, "--chronological-age", str(age),
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    row = json.loads(out)
    assert {key: row[key] for key in expected} == pytest.approx(expected)
    assert row["notice"] == RESEARCH_USE_ONLY and RESEARCH_USE_ONLY in err.splitlines()

    assert main(["predict", str(film), "--model", calibrated_model, "--chronological-age", str(age),
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert sds_text(row["sds"], row["sds_low"], row["sds_high"], category) in line

    values = read_report(build_report(pydicom.dcmread(film), row))
    assert (values["sds"], values["sds-low"], values["sds-high"]) == pytest.approx(
        (expected["sds"], expected["sds_low"], expected["sds_high"]))
    assert values["category"] == [category] and values["notice"] == RESEARCH_USE_ONLY
    assert values["category-text"] == f"SDS {row['sds']:+.1f} ({row['sds_low']:+.1f} to {row['sds_high']:+.1f}), {category}"


def test_the_upload_page_says_research_use_only_and_shows_the_sds_range():
    assert INDEX_HTML.count(RESEARCH_USE_ONLY) == 2 and "__RESEARCH_USE_ONLY__" not in INDEX_HTML
    assert 'id="research-use"' in INDEX_HTML and "d.sds_low" in INDEX_HTML and "indeterminate" in INDEX_HTML
