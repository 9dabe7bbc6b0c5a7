"""The one-page report: on a constructed result (research use only, the SDS range, the category rule), and on
real films with the shipped model (a refused film's page, the heatmap's shape, colour bar and caption);
evaluate's HTML page."""

from __future__ import annotations

import html

import cv2
import numpy as np
import pytest

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.clinical.heatmap import CAPTION, figure_png
from boneage.files.images import read_image
from boneage.predict.predictor import Prediction
from boneage.predict.report import render_html, render_pdf, report_lines
from tests.helpers import FIXTURES

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


# --- on real films, with the shipped model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor():
    from boneage.predict.predictor import Predictor

    return Predictor.load(None, device="cpu")


@pytest.fixture(scope="module")
def noise_film(tmp_path_factory):
    """Not a hand: the film check refuses it (as the endpoint's and the listener's tests make one)."""
    path = tmp_path_factory.mktemp("refused") / "noise.png"
    cv2.imwrite(str(path), np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8))
    return path


def _page_of(predictor, path):
    from boneage.predict.report import page_contents

    return page_contents(predictor, read_image(str(path)), "M", 150.0)


def test_a_refused_films_report_gives_its_reason_once_and_no_heatmap(predictor, noise_film):
    import matplotlib.pyplot as plt

    from boneage.predict.report import _page, render_rgb

    row, original, model_input, cam, calibration = _page_of(predictor, noise_film)
    assert row.bone_age_months is None and cam is None
    lines = dict(report_lines(row, calibration))
    reason = row.quality["detail"]
    assert "refused" in lines["Bone age"] and reason not in lines["Bone age"]
    assert sum(reason in text for text in lines.values()) == 1  # once, under Quality
    page = render_html(row, original, model_input, cam, calibration)
    assert page.count(html.escape(reason)) == 1 and html.escape(CAPTION) not in page  # no heatmap: no caption
    # Every picture lies under the panel titles, which lie under the header, whatever the pictures' shapes or
    # their absence (the heatmap's title, the title of an empty axes, once floated over the header).
    fig = _page(row, original, model_input, cam, calibration)
    fig.canvas.draw()
    titles = [text for text in fig.texts if text.get_text() in ("Radiograph", "Model input", "Heatmap (Grad-CAM)")]
    header = [text for text in fig.texts if text.get_text() == RESEARCH_USE_ONLY]
    lowest_header = min(text.get_window_extent().y0 for text in header)
    assert len(titles) == 3 and all(text.get_window_extent().y1 < lowest_header for text in titles)
    assert all(ax.get_window_extent().y1 < min(t.get_window_extent().y0 for t in titles) for ax in fig.axes[:3])
    plt.close(fig)
    assert render_rgb(row, original, model_input, cam, calibration, dpi=60).std() > 10


def test_a_real_films_heatmap_is_at_the_hands_proportions_with_a_colour_bar_and_caption(predictor, tmp_path):
    from boneage.predict.report import render_rgb

    row, original, model_input, cam, calibration = _page_of(predictor, FIXTURES / "rsna_1377.png")
    assert model_input.shape[0] == model_input.shape[1]  # the network sees the hand's box squared
    assert 0.5 < row.hand_aspect < 0.9  # this hand's box is taller than wide on the film
    png = tmp_path / "heat.png"
    png.write_bytes(figure_png(model_input, cam, row.hand_aspect))
    image = cv2.imread(str(png), cv2.IMREAD_COLOR)
    assert image.shape[0] > image.shape[1]  # portrait, as the hand, not the square input
    # The colour bar: a column right of the picture running through the colour map, blue to red.
    right = image[:, int(0.8 * image.shape[1]):]
    assert ((right[..., 0].astype(int) - right[..., 2]) > 150).any() and ((right[..., 2].astype(int) - right[..., 0]) > 150).any()
    page = render_html(row, original, model_input, cam, calibration)
    assert html.escape(CAPTION) in page and page.count("data:image/png;base64,") == 3
    assert render_rgb(row, original, model_input, cam, calibration, dpi=60).std() > 10


def test_the_evaluation_page_shows_code_not_markdown_backticks(tmp_path):
    from boneage.train.evaluation import write_evaluation_page

    figures = {"n": 2, "mae": 5.0, "rmse": 6.0, "r2": 0.9, "within_6m": 0.5, "within_12m": 1.0}
    report = {"overall": figures, "by_age_group": {"5-10": figures}, "by_sex": {"M": figures}}
    write_evaluation_page(str(tmp_path), report, {}, "m1", "cache/<val>", {"data": {"train_images": 10}})
    page = (tmp_path / "report.html").read_text()
    assert "`" not in page and "<code>m1</code>" in page and "<code>cache/&lt;val&gt;</code>" in page
    assert "`m1`" in (tmp_path / "report.md").read_text()
