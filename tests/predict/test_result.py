"""The one result schema (issue 29, item 1): a field added to ``Prediction`` reaches every output by itself."""

from __future__ import annotations

import io
import json
import re
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from boneage.predict.result import (
    ErrorCode,
    Output,
    Prediction,
    PreparedFilm,
    Quality,
    Reason,
    Verdict,
    output_fields,
    public_fields,
    withheld_fields,
)
from boneage.predict.scoring import RESULT_SCHEMA, from_row, result_schema, to_row
from tests.helpers import ROOT


class WithPercentile(Prediction):
    """What a newcomer writes to add an output (docs/howto/add-output-field.md), here in a subclass."""

    bone_age_percentile: Annotated[float | None, Output(withheld=True, label="Bone age percentile", digits=0)] = None


def scored(cls=WithPercentile, verdict=Verdict.OK, **more) -> Prediction:
    quality = Quality(verdict=verdict, contrast=0.8, **({Reason.NOT_A_HAND: True} if verdict is Verdict.REFUSED else {}))
    return cls(path="/films/a.png", id="a", sex="F", chronological_age_months=110.0, bone_age_months=114.0,
               bone_age_years_months="9 y 6 m", quality=quality, model_version="m1", model_trained=True,
               **({"bone_age_percentile": 42.0} if cls is WithPercentile else {}), **more)


def test_a_new_field_reaches_parquet_json_and_the_endpoints_answer():
    from boneage.serving.handler import response_body
    from boneage.serving.schemas import BoneAgeResult, response_model

    row = scored()
    # Parquet: a column of its own, written and read back
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([to_row(row)], schema=result_schema(result=WithPercentile)), buf)
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    assert table.schema.field("bone_age_percentile").type == pa.float64()
    assert table.column("bone_age_percentile").to_pylist() == [42.0]
    assert table.column("bone_age_months").to_pylist() == [114.0] and table.column("verdict").to_pylist() == ["ok"]
    # JSON (boneage predict --json)
    assert json.loads(json.dumps(row.to_dict()))["bone_age_percentile"] == 42.0
    # the endpoint's answer, validated by the HTTP model derived from the same type
    body = response_body(row)
    answer = response_model(WithPercentile).model_validate(json.loads(json.dumps(body)))
    assert answer.bone_age_percentile == 42.0 and answer.quality.verdict is Verdict.OK
    assert "path" not in body and "error" not in body  # the server's own fields stay on the server
    with pytest.raises(ValidationError, match="bone_age_percentile"):
        BoneAgeResult.model_validate(body)  # strict: a field the model lacks is an error, not a silent extra


def test_a_new_field_is_withheld_with_the_bone_age_and_shown_by_the_renderers():
    from boneage.cli import _row_text
    from boneage.predict.report import report_lines
    from boneage.serving.handler import response_body
    from boneage.serving.webpage import page_html

    assert "bone_age_percentile" in withheld_fields(WithPercentile)
    refused = scored(verdict=Verdict.REFUSED)
    body = response_body(refused)
    assert body["bone_age_percentile"] is None and body["bone_age_months"] is None
    assert response_body(refused, score_anyway=True)["bone_age_percentile"] == 42.0
    assert refused.bone_age_percentile == 42.0  # withholding makes a new result; the scored one is unchanged
    row = scored()
    assert "; Bone age percentile 42" in _row_text(row)
    assert ("Bone age percentile", "42") in report_lines(row)
    assert '["bone_age_percentile", "Bone age percentile", 0, ""]' in page_html(WithPercentile)


def test_a_new_field_is_a_text_item_of_the_structured_report():
    from boneage.predict.structured_report import build_report, read_report
    from tests.predict.test_structured_report import _encoded, _film

    report = _encoded(build_report(_film(), {**scored().to_dict(), **scored().quality}, result=WithPercentile))
    assert read_report(report, result=WithPercentile)["bone-age-percentile"] == "42"


def test_every_output_is_derived_from_the_one_type():
    from boneage.serving.handler import RESPONSE_FIELDS
    from boneage.serving.schemas import BoneAgeResult

    flat = [name for name in output_fields() if name != "quality"]
    assert set(flat) | set(Quality.model_fields) == set(RESULT_SCHEMA.names)
    assert RESULT_SCHEMA.names.index("verdict") == RESULT_SCHEMA.names.index("reference") + 1  # the columns' order
    assert RESPONSE_FIELDS == tuple(public_fields())
    assert set(BoneAgeResult.model_fields) == {*public_fields(), "heatmap_png_base64", "warning", "notice"}
    assert withheld_fields()[:2] == ("bone_age_months", "bone_age_years_months")
    assert {"sex", "quality", "model_version", "chronological_age_months"}.isdisjoint(withheld_fields())
    assert {reason.value for reason in Reason} <= set(Quality.model_fields)


def test_the_result_and_its_quality_are_immutable_and_refuse_unknown_keys():
    row = scored(Prediction)
    with pytest.raises(ValidationError):
        row.bone_age_months = 1.0
    with pytest.raises(ValidationError):
        Quality(verdict="ok", p_hands=0.9)  # misspelt
    with pytest.raises(ValidationError):
        Quality(verdict="maybe")
    assert row.quality.get("verdict") == "ok" and {**row.quality}["contrast"] == 0.8  # read as the dict it was


def test_every_reading_error_code_is_known():
    """The codes ``ImageReadError`` is raised with are values of ``ErrorCode`` (a result with another fails)."""
    codes = set()
    for path in (ROOT / "boneage").rglob("*.py"):
        codes |= set(re.findall(r'ImageReadError\(\s*[\w.\[\]"]+,\s*"(\w+)"', path.read_text()))
    assert codes and codes <= {code.value for code in ErrorCode}, codes - {code.value for code in ErrorCode}


def test_a_refused_film_is_never_scored_unless_asked(monkeypatch):
    from boneage.predict.predictor import Predictor, untrained_checkpoint

    predictor = Predictor(untrained_checkpoint(), device="cpu")
    image = np.full((predictor.preprocess_config.output_size,) * 2, 128, np.uint8)
    refusal = Quality(verdict=Verdict.REFUSED, not_a_hand=True, rejection="not_a_hand")
    films = [PreparedFilm(path="a.png", id="a", sex="F", quality=refusal, image=image),
             PreparedFilm(path="b.png", id="b", sex="M", quality=Quality(), image=image),
             PreparedFilm(path="c.png", id="c", error="file not found", error_code=ErrorCode.NOT_FOUND)]
    seen = []
    real = predictor.predict_arrays_tta
    monkeypatch.setattr(predictor, "predict_arrays_tta", lambda images, male: seen.append(len(images)) or real(images, male))
    refused, ok, failed = predictor.predict_prepared(films)
    assert seen == [1]  # only the film that may be scored reached the network
    assert refused.bone_age_months is None and refused.refused and refused.model_version == predictor.version
    assert ok.bone_age_months is not None and failed.error_code is ErrorCode.NOT_FOUND
    assert predictor.predict_prepared(films, score_anyway=True)[0].bone_age_months is not None


def test_a_prepared_film_travels_as_a_row_and_back():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    film = PreparedFilm(path="a.png", id="a", sex="F", chronological_age_months=100.0,
                        quality=Quality(verdict=Verdict.WARNING, contrast=0.2, low_contrast=True), image=image,
                        identifiers={"patient_name": "X"})
    back = from_row(to_row(film, identifiers=True, with_image=True))
    assert (back.path, back.sex, back.chronological_age_months, back.quality) == ("a.png", "F", 100.0, film.quality)
    assert dict(back.identifiers)["patient_name"] == "X"
    np.testing.assert_array_equal(back.image, image)


def test_every_output_field_is_described_in_the_docs():
    """The one place a new field still needs words: docs/predict.md or docs/results.md (a miss is loud)."""
    text = (ROOT / "docs" / "predict.md").read_text() + (ROOT / "docs" / "results.md").read_text()
    names = [name for name in output_fields() if name != "quality"] + list(Quality.model_fields)
    assert not [name for name in names if f"`{name}`" not in text]
