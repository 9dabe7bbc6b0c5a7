"""The Structured Report of a result, read back from its DICOM encoding as a PACS would store it."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.predict.structured_report import SERIES_DESCRIPTION, build_report, read_report, report_uid
from tests.helpers import FIXTURES, load_grey, make_dicom

SCORED = {"bone_age_months": 121.37, "bone_age_interval_low": 101.2, "bone_age_interval_high": 141.5,
          "bone_age_minus_chronological_months": -6.63, "sds": -0.52, "sds_low": -1.63, "sds_high": 0.57,
          "maturity_category": "average",
          "verdict": "ok", "model_version": "tf_efficientnet_lite0-df82806297a6"}


def _film(**header) -> pydicom.Dataset:
    data = make_dicom(load_grey(FIXTURES / "rsna_1377.png"), StudyInstanceUID=generate_uid(),
                      SeriesInstanceUID=generate_uid(), **header)
    return pydicom.dcmread(io.BytesIO(data))


def _encoded(report: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_a_scored_film_report_holds_its_values_in_its_own_study():
    film = _film(AccessionNumber="ACC7", PatientBirthDate="20100101")
    report = _encoded(build_report(film, SCORED))
    assert report.Modality == "SR" and report.SeriesDescription == SERIES_DESCRIPTION
    assert report.StudyInstanceUID == film.StudyInstanceUID and report.SeriesInstanceUID != film.SeriesInstanceUID
    assert (report.PatientID, report.PatientName, report.AccessionNumber) == (film.PatientID, film.PatientName, "ACC7")
    values = read_report(report)
    assert values["85151-9"] == pytest.approx(121.37)
    assert (values["interval-low"], values["interval-high"]) == pytest.approx((101.2, 141.5))
    assert values["minus-chrono"] == pytest.approx(-6.63) and values["sds"] == pytest.approx(-0.52)
    assert (values["sds-low"], values["sds-high"]) == pytest.approx((-1.63, 0.57))
    assert values["category"] == ["average"] and values["category-text"] == "SDS -0.5 (-1.6 to +0.6), average"
    assert values["notice"] == RESEARCH_USE_ONLY
    assert (values["algorithm"], values["algorithm_version"]) == ("boneage", SCORED["model_version"])
    assert "refused" not in values


def test_a_refused_film_report_says_why_and_gives_no_bone_age():
    row = {"verdict": "refused", "rejection": "not_a_hand", "model_version": "m1", "bone_age_months": float("nan"),
           "maturity_category": None}
    values = read_report(_encoded(build_report(_film(), row)))
    assert values["refused"] == ["not_a_hand"] and "85151-9" not in values and "category" not in values
    assert "category-text" not in values and values["notice"] == RESEARCH_USE_ONLY


def test_without_an_interval_the_report_says_so_in_words():
    row = {**SCORED, "bone_age_interval_low": None, "bone_age_interval_high": None, "sds_low": None,
           "sds_high": None, "sds": -2.6, "maturity_category": "indeterminate"}
    values = read_report(_encoded(build_report(_film(), row)))
    assert "sds-low" not in values and values["category"] == ["indeterminate"]
    assert values["category-text"] == "SDS -2.6 (no interval), indeterminate"


def test_the_same_film_and_model_give_the_same_report_uid_and_a_new_model_another():
    film = _film()
    first, second = build_report(film, SCORED), build_report(film, SCORED)
    assert first.SOPInstanceUID == second.SOPInstanceUID == report_uid(film.SOPInstanceUID, SCORED["model_version"])
    assert build_report(film, {**SCORED, "model_version": "other"}).SOPInstanceUID != first.SOPInstanceUID
