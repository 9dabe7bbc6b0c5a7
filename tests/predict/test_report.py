"""The one-page report on a constructed result: research use only, the SDS range and the category rule."""

from __future__ import annotations

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.predict.predictor import Prediction
from boneage.predict.report import render_html, render_pdf, report_lines

ROW = Prediction(path="hand.png", id="hand", sex="F", bone_age_months=114.0, bone_age_years_months="9 y 6 m",
                 quality={"verdict": "ok"}, model_version="m1", model_trained=True, chronological_age_months=120.0,
                 bone_age_interval_low=91.0, bone_age_interval_high=137.0, interval_level=0.9,
                 bone_age_minus_chronological_months=-6.0, sds=-0.6, sds_low=-2.9, sds_high=1.7,
                 maturity_category="indeterminate", reference="flat-10")


def test_the_report_shows_the_sds_range_the_category_rule_and_research_use_only():
    lines = dict(report_lines(ROW))
    assert "SDS -0.6 (-2.9 to +1.7), indeterminate against flat-10" in lines["Compared with age"]
    assert lines["Maturity category"].startswith("indeterminate (") and "whole SDS range" in lines["Maturity category"]
    page = render_html(ROW, None, None, None)
    assert page.count(RESEARCH_USE_ONLY) == 2  # at the top and in the closing note
    assert "SDS -0.6 (-2.9 to +1.7), indeterminate" in page
    assert render_pdf(ROW, None, None, None).startswith(b"%PDF")
