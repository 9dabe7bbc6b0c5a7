"""A scored film's result as a DICOM Structured Report in the film's own study, made with highdicom.

The report is a TID 1500 Measurement Report (``Comprehensive3DSR``) in a new series of the source
film's study. It copies the patient and study identifiers from the source film, as a PACS requires
to file it in the right place. One measurement group, identified by the model (name and version,
TID 4019 algorithm identification), references the source image and holds:

- the bone age: LOINC ``85151-9`` "XR Bone age", in UCUM months (``mo``); absent for a refused film;
- its calibrated interval, the difference from chronological age (months), and the SDS, as
  measurements named in this project's private scheme ``99BONEAGE`` (no standard codes exist for
  them), with the reference named in the method (LOINC ``85150-1`` "Bone age method");
- the SDS range (the interval's ends as SDS, ``sds-low`` and ``sds-high``);
- the maturity category and, for a refused film, the refusal reason, as qualitative evaluations
  in ``99BONEAGE``;
- as text items of the report (``99BONEAGE`` ``category-text``, ``notice``): the SDS, its range and the
  category in words, as every other output writes them, and the research-use notice; and each labelled field
  of the result schema (:class:`boneage.predict.result.Output`), coded by its name.

The SOP Instance UID is derived from the source instance and the model version, so storing the
report of the same film by the same model twice files one instance, not two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.clinical.reference import sds_text
from boneage.predict.result import Prediction, Verdict, labelled_fields

SCHEME = "99BONEAGE"
SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "Bone age (boneage, automated)"
# Patient and study attributes an SR copies from its evidence; DICOM lets a film leave them empty
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _code(value: str, scheme: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def report_uid(source_sop_instance_uid: str, model_version: str) -> str:
    """The report's SOP Instance UID: the same for the same film and model, on every run and machine."""
    return generate_uid(entropy_srcs=["boneage-sr", source_sop_instance_uid, model_version])


def _number(row: Mapping, key: str) -> float | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _with_type_2(source: Dataset) -> Dataset:
    """A copy of the film's header whose absent type 2 attributes (patient, study) are present and empty."""
    source = Dataset(source)
    for keyword in _TYPE_2:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def _text(row: Mapping, key: str) -> str | None:
    value = row.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else str(value)


def build_report(source: Dataset, row: Mapping, result: type[Prediction] = Prediction) -> Dataset:
    """The SR dataset for one result row (a score table row or ``Prediction.to_dict()``) of ``source``
    (the film's header; pixel data not needed); ``result``: the schema whose labelled fields it carries."""
    import highdicom as hd

    source = _with_type_2(source)
    months = _code("mo", "UCUM", "month")
    version = str(row.get("model_version") or "unknown")
    reference_image = hd.sr.SourceImageForMeasurement(
        referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID)
    method = _code("85150-1", "LN", "Bone age method")
    measurements = []
    named = (("bone_age_months", "85151-9", "LN", "XR Bone age"),
             ("bone_age_interval_low", "interval-low", SCHEME, "Bone age interval, lower limit"),
             ("bone_age_interval_high", "interval-high", SCHEME, "Bone age interval, upper limit"),
             ("bone_age_minus_chronological_months", "minus-chrono", SCHEME,
              "Bone age minus chronological age"))
    for key, value, scheme, meaning in named:
        number = _number(row, key)
        if number is not None:
            measurements.append(hd.sr.Measurement(name=_code(value, scheme, meaning), value=number, unit=months,
                                                  referenced_images=[reference_image]))
    for key, meaning in (("sds", "Bone age standard deviation score"),
                         ("sds_low", "Bone age standard deviation score, interval lower limit"),
                         ("sds_high", "Bone age standard deviation score, interval upper limit")):
        number = _number(row, key)
        if number is not None:
            measurements.append(hd.sr.Measurement(
                name=_code(key.replace("_", "-"), SCHEME, meaning), value=number,
                unit=_code("{SD}", "UCUM", "standard deviation"), method=method, referenced_images=[reference_image]))
    evaluations = []
    category = _text(row, "maturity_category")
    if category:
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=_code("category", SCHEME, "Maturity category"), value=_code(category, SCHEME, category)))
    if _text(row, "verdict") == Verdict.REFUSED:
        for reason in (_text(row, "rejection") or _text(row, "reasons") or Verdict.REFUSED.value).split(","):
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_code(Verdict.REFUSED.value, SCHEME, "Bone age withheld"), value=_code(reason, SCHEME, reason)))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[source.SOPInstanceUID, version]),
                                                     identifier="bone age"),
        algorithm_id=hd.sr.AlgorithmIdentification(name="boneage", version=version),
        measurements=measurements or None, qualitative_evaluations=evaluations or None)
    observer = hd.sr.ObserverContext(
        observer_type=_code("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["boneage", version]), name="boneage", model_name=version))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_code("85151-9", "LN", "XR Bone age"),
        imaging_measurements=[group], title=_code("126000", "DCM", "Imaging Measurement Report"))
    content[0].ContentSequence.extend(_text_items(row, result))
    return hd.sr.Comprehensive3DSR(
        evidence=[source], content=content, series_instance_uid=generate_uid(entropy_srcs=["boneage-series",
                                                                                            source.StudyInstanceUID,
                                                                                            version]),
        series_number=SERIES_NUMBER, sop_instance_uid=report_uid(source.SOPInstanceUID, version), instance_number=1,
        manufacturer="boneage", series_description=SERIES_DESCRIPTION)


def _text_items(row: Mapping, result: type[Prediction] = Prediction) -> list:
    """The SDS sentence of the other outputs (when there is an SDS), the research-use notice, and each labelled
    field of the result schema (code: its name in ``99BONEAGE``), as TEXT items."""
    import highdicom as hd

    sentence = sds_text(_number(row, "sds"), _number(row, "sds_low"), _number(row, "sds_high"),
                        _text(row, "maturity_category"))
    texts = [("category-text", "Maturity category, in words", sentence), ("notice", "Intended use", RESEARCH_USE_ONLY)]
    texts += [(name.replace("_", "-"), out.label, None if _text(row, name) is None else out.text(row.get(name)))
              for name, out in labelled_fields(result).items()]
    return [hd.sr.TextContentItem(name=_code(value, SCHEME, meaning), value=text,
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for value, meaning, text in texts if text]


def read_report(report: Dataset, result: type[Prediction] = Prediction) -> dict:
    """The values of a report written by :func:`build_report`: {code value: number, code or text}."""
    values: dict = {}
    labelled = labelled_fields(result)

    def code(item) -> str | None:
        return getattr(item, "CodeValue", None) or getattr(item, "LongCodeValue", None)

    def walk(items) -> None:
        for item in items:
            name = code(item.ConceptNameCodeSequence[0]) if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "NUM":
                values[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and name in ("category", Verdict.REFUSED):
                values.setdefault(name, []).append(code(item.ConceptCodeSequence[0]))
            elif item.ValueType == "TEXT" and name == "111001":  # algorithm name
                values["algorithm"] = item.TextValue
            elif item.ValueType == "TEXT" and name == "111003":  # algorithm version
                values["algorithm_version"] = item.TextValue
            elif item.ValueType == "TEXT" and name and (name in ("category-text", "notice")
                                                        or name.replace("-", "_") in labelled):
                values[name] = item.TextValue
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(report.ContentSequence)
    return values


SC_SERIES_NUMBER = 9902


def build_secondary_capture(source: Dataset, page: np.ndarray, model_version: str) -> Dataset:
    """The one-page report (an RGB image, :func:`boneage.predict.report.render_rgb`) as a Secondary
    Capture in the film's study, so every viewer shows it; its UID, like the SR's, is derived from the
    film and the model version."""
    import highdicom as hd

    source = _with_type_2(source)
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=page, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        series_instance_uid=generate_uid(entropy_srcs=["boneage-sc-series", source.StudyInstanceUID, model_version]),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=secondary_capture_uid(source.SOPInstanceUID, model_version),
        instance_number=1, manufacturer="boneage", series_description="Bone age report (boneage, automated)")


def secondary_capture_uid(source_sop_instance_uid: str, model_version: str) -> str:
    return generate_uid(entropy_srcs=["boneage-sc", source_sop_instance_uid, model_version])
