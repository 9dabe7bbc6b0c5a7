"""Clinical outputs on real radiographs: conformal intervals with measured coverage, the comparison
with chronological age against the shipped reference, Grad-CAM heatmaps and the one-page report."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.clinical.heatmap import grad_cam, overlay_png
from boneage.clinical.intervals import Calibration, conformal_quantile, tta_variants
from boneage.clinical.reference import DEFAULT_REFERENCE, REFERENCE_ENV, load_reference, maturity_category
from boneage.files.cache import read_cache, read_labels, row_image
from boneage.network.checkpoint import load_checkpoint
from boneage.predict.predictor import Predictor
from boneage.prepare.cache_chunks import process_chunk
from boneage.prepare.stages import PreprocessConfig
from tests.helpers import FIXTURES, SHARED_DATA, run_cli

HAND, HAND2 = FIXTURES / "rsna_1377.png", FIXTURES / "rsna_7047.png"
N_CALIBRATION = 20  # real images: enough for two 90% halves (9 each at least), small enough for 2 CPUs
TTA = 3


def _reference_rows() -> pd.DataFrame:
    return pd.read_csv(DEFAULT_REFERENCE, comment="#")


def test_reference_is_interpolated_linearly_and_not_extrapolated(tmp_path, monkeypatch):
    ref, table = load_reference(), _reference_rows()
    assert ref.name == "greulich-pyle-brush-1959"
    # no transcription of the table has a girls' value at 204 months: a girl over 192 months gets no SDS
    assert ref.sd(192, "F") == pytest.approx(7.31) and ref.sd(193, "F") is None and ref.sd(200, "M") is not None
    for sex in ("M", "F"):
        rows = table[table["sex"] == sex].sort_values("age_months")
        for age, sd in zip(rows["age_months"], rows["sd_months"], strict=True):
            assert ref.sd(age, sex) == pytest.approx(sd)
        (a0, s0), (a1, s1) = rows.iloc[10][["age_months", "sd_months"]], rows.iloc[11][["age_months", "sd_months"]]
        assert ref.sd((a0 + a1) / 2, sex) == pytest.approx((s0 + s1) / 2)
        assert ref.sd(rows["age_months"].min() - 0.5, sex) is None and ref.sd(rows["age_months"].max() + 1, sex) is None

    sd_m_120 = ref.sd(120, "M")
    delayed, average, advanced = (ref.compare(120 + k * sd_m_120, 120, "M", (120 + (k - 0.4) * sd_m_120,
                                                                              120 + (k + 0.4) * sd_m_120))
                                  for k in (-2.5, 1.0, 2.5))
    assert (delayed.category, average.category, advanced.category) == ("delayed", "average", "advanced")
    assert average.sds == pytest.approx(1.0, abs=1e-3)
    assert (average.sds_low, average.sds_high) == pytest.approx((0.6, 1.4), abs=1e-3)
    assert delayed.minus_chronological_months == pytest.approx(-2.5 * sd_m_120, abs=0.01)
    outside = ref.compare(260.0, 250.0, "F")  # a chronological age beyond the table: difference only
    assert outside.minus_chronological_months == pytest.approx(10.0) and outside.sds is None and outside.category is None
    assert ref.compare(100.0, None, "F").minus_chronological_months is None
    assert ref.compare(100.0, 120, "M").category == "indeterminate"  # no interval: no claim either way

    ours = tmp_path / "our_hospital.csv"
    ours.write_text("# name: our-hospital-2024\nsex,age_months,sd_months\nM,0,5\nM,240,5\nF,0,4\nF,240,4\n")
    monkeypatch.setenv(REFERENCE_ENV, str(ours))
    swapped = load_reference()
    assert swapped.name == "our-hospital-2024" and swapped.compare(130, 120, "F").sds == pytest.approx(2.5)


def test_conformal_quantile_gives_the_stated_coverage_on_exchangeable_data():
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(400):
        scores = np.abs(rng.standard_t(3, size=40))
        q = conformal_quantile(scores[:20], 0.9)
        covered.append(np.mean(scores[20:] <= q))
    assert 0.88 <= np.mean(covered) <= 0.96  # split conformal: >= 0.9 in expectation, <= 0.9 + 1/(n+1)
    with pytest.raises(ValueError, match="too few"):
        conformal_quantile(np.ones(8), 0.9)


@pytest.fixture(scope="module")
def model18(tmp_path_factory) -> Path:
    """An untrained ResNet-18 checkpoint (the cheapest resnet): conformal coverage holds for any model."""
    path = tmp_path_factory.mktemp("clinical") / "resnet18.pt"
    assert run_cli("init-checkpoint", "--out", str(path), "--backbone", "resnet18", "--seed", "2").returncode == 0
    return path


def test_tta_keeps_the_plain_prediction_and_its_spread_is_reproducible(model18):
    predictor = Predictor.load(str(model18), device="cpu", tta=TTA)
    rows = predictor.predict_files([str(HAND), str(HAND2)], sex="F", keep_preprocessed=True)
    images = np.stack([r.preprocessed for r in rows])
    plain = predictor.predict_arrays(images, [0.0, 0.0])
    pred, spread = predictor.predict_arrays_tta(images, [0.0, 0.0])
    np.testing.assert_array_equal(pred, plain)  # the first variant is the unaltered image
    assert spread.shape == (2,) and np.all(spread > 0)
    _, again = predictor.predict_arrays_tta(images, [0.0, 0.0])
    np.testing.assert_array_equal(spread, again)
    assert [r.tta_sd_months for r in rows] == pytest.approx(list(spread), abs=1e-3)
    assert len(set(tta_variants(TTA))) == TTA and tta_variants(TTA) == tta_variants(TTA)
    assert all(r.bone_age_interval_low is None and r.interval_level is None for r in rows)  # not calibrated
    _, off = predictor.predict_arrays_tta(images, [0.0, 0.0], n=0)
    assert off is None


def test_grad_cam_is_a_map_over_the_input_and_leaves_inference_intact(model18):
    predictor = Predictor.load(str(model18), device="cpu")
    row = predictor.predict_files([str(HAND)], sex="M", keep_preprocessed=True)[0]
    before = predictor.predict_arrays(row.preprocessed, [1.0])
    with torch.inference_mode():  # as Serve or a caller might hold it
        cam = grad_cam(predictor.model, row.preprocessed, 1.0)
    assert cam.shape == row.preprocessed.shape and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() == pytest.approx(1.0) and cam.std() > 0.01
    np.testing.assert_array_equal(cam, predictor.heatmap(row.preprocessed, "M"))  # deterministic
    assert all(p.grad is None for p in predictor.model.parameters())
    assert not predictor.model.training
    np.testing.assert_array_equal(before, predictor.predict_arrays(row.preprocessed, [1.0]))
    png = cv2.imdecode(np.frombuffer(overlay_png(row.preprocessed, cam), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (*row.preprocessed.shape, 3)
    # Where the heatmap is cold the overlay is the radiograph itself.
    cold = cam < 1e-3
    if cold.any():
        assert np.abs(png[cold].astype(int) - row.preprocessed[cold][:, None]).max() <= 1


@pytest.fixture(scope="module")
def calibration_cache(tmp_path_factory) -> Path:
    """A real labelled cache (boneage preprocess's format) of the first RSNA training images."""
    if not (SHARED_DATA / "rsna" / "train.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    out = tmp_path_factory.mktemp("cache") / "cache"
    paths = sorted(str(p) for p in (SHARED_DATA / "rsna" / "train").glob("*.png"))[: N_CALIBRATION + 4]
    process_chunk("c0", paths, read_labels(str(SHARED_DATA / "rsna" / "train.csv")), str(out), PreprocessConfig())
    frame = read_cache(str(out))
    assert len(frame) >= N_CALIBRATION, len(frame)
    if len(frame) > N_CALIBRATION:  # keep exactly N: rebuild from the first N kept files
        shutil.rmtree(out)
        kept = sorted(frame["path"])[:N_CALIBRATION]
        process_chunk("c0", kept, read_labels(str(SHARED_DATA / "rsna" / "train.csv")), str(out), PreprocessConfig())
    return out


@pytest.fixture(scope="module")
def calibrated(model18, calibration_cache, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("calibrated") / "calibrated.pt"
    proc = run_cli("calibrate", "--model", str(model18), "--data", str(calibration_cache), "--out", str(out),
                   "--tta", str(TTA), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return {"model": out, "stdout": proc.stdout}


@pytest.mark.integration
def test_calibration_measures_coverage_by_cross_fitting_and_is_stored_in_the_checkpoint(calibrated,
                                                                                        calibration_cache, model18):
    meta = load_checkpoint(str(calibrated["model"])).metadata
    cal = meta["calibration"]
    assert cal["method"] == "conformal-tta-normalised" and cal["level"] == 0.9 and cal["tta"] == TTA
    assert cal["n"] == N_CALIBRATION and cal["q"] > 0 and cal["eps"] == 1.0 and str(calibration_cache) in cal["data"]
    halves = cal["coverage"]["halves"]
    assert [h["calibrated_on"] + h["measured_on"] for h in halves] == [N_CALIBRATION] * 2
    assert {h["calibrated_on"] for h in halves} == {N_CALIBRATION // 2, N_CALIBRATION - N_CALIBRATION // 2}
    assert all(0 <= h["coverage"] <= 1 and h["mean_width_months"] > 0 for h in halves)
    assert f"{100 * cal['coverage']['coverage']:.1f}%" in calibrated["stdout"]
    assert meta["calibrated_from"].startswith("resnet18-")
    # The weights are the model's: same bone ages as the uncalibrated file.
    frame = read_cache(str(calibration_cache))
    images = np.stack([row_image(r) for _, r in frame.iterrows()])
    male = frame["male"].astype(float).to_numpy()
    truth = frame["boneage"].astype(float).to_numpy()
    plain = Predictor.load(str(model18), device="cpu").predict_arrays(images, male)
    predictor = Predictor.load(str(calibrated["model"]), device="cpu")
    assert predictor.tta == TTA  # follows the calibration
    pred, spread = predictor.predict_arrays_tta(images, male)
    np.testing.assert_allclose(pred, plain, atol=1e-4)
    # Recompute the coverage the command measured, from the predictions alone.
    half_width = Calibration.from_dict(cal).half_widths(pred, spread)  # the q of each film's band
    assert np.mean(np.abs(truth - pred) <= half_width + 1e-3) >= 0.9  # q from the whole set covers >= ceil(21*.9)/20
    assert [band["band"] for band in cal["coverage"]["by_band"]] == ["0-60", "60-120", "120-168", "168+"]


@pytest.mark.integration
def test_predict_reports_the_interval_comparison_and_heatmap(calibrated, tmp_path):
    model = str(calibrated["model"])
    cal = load_checkpoint(model).metadata["calibration"]
    heat = tmp_path / "heat"
    proc = run_cli("predict", str(HAND), str(HAND2), "--sex", "F", "--chronological-age", "150", "--json",
                   "--model", model, "--heatmap", str(heat), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    ref = load_reference()
    for row in rows:
        assert row["interval_level"] == 0.9 and row["tta_sd_months"] > 0
        half = Calibration.from_dict(cal).half_width(row["bone_age_months"], row["tta_sd_months"])
        assert row["bone_age_interval_low"] == pytest.approx(max(0.0, row["bone_age_months"] - half), rel=1e-3, abs=0.02)
        assert row["bone_age_interval_high"] == pytest.approx(row["bone_age_months"] + half, rel=1e-3, abs=0.02)
        assert row["bone_age_minus_chronological_months"] == pytest.approx(row["bone_age_months"] - 150, abs=0.01)
        assert row["sds"] == pytest.approx((row["bone_age_months"] - 150) / ref.sd(150, "F"), abs=0.01)
        ends = np.array([row["bone_age_interval_low"], row["bone_age_interval_high"]])
        assert [row["sds_low"], row["sds_high"]] == pytest.approx((ends - 150) / ref.sd(150, "F"), abs=0.01)
        assert row["maturity_category"] == maturity_category(row["sds_low"], row["sds_high"])
        assert row["reference"] == ref.name and row["notice"] == RESEARCH_USE_ONLY
        image = cv2.imread(row["heatmap"], cv2.IMREAD_COLOR)  # the hand's proportions, a colour bar and a caption
        assert image is not None and image.shape[0] > image.shape[1] > 384
    assert sorted(p.name for p in heat.iterdir()) == ["rsna_1377_heatmap.png", "rsna_7047_heatmap.png"]

    proc = run_cli("predict", str(HAND), "--sex", "F", "--model", model, "--tta", "0", "--json", "--device", "cpu")
    row = json.loads(proc.stdout)  # TTA off: the calibration's spread is unknown, so no interval is invented
    assert row["bone_age_interval_low"] is None and row["tta_sd_months"] is None
    assert row["bone_age_minus_chronological_months"] is None and row["maturity_category"] is None
    assert "no interval is reported" in proc.stderr


def test_calibration_without_tta_and_a_held_out_split_too_small(model18, calibration_cache, tmp_path):
    out = tmp_path / "abs.pt"
    proc = run_cli("calibrate", "--model", str(model18), "--data", str(calibration_cache), "--out", str(out),
                   "--tta", "0", "--level", "0.8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    cal = load_checkpoint(str(out)).metadata["calibration"]
    assert cal["method"] == "conformal-absolute" and cal["tta"] == 0 and cal["level"] == 0.8
    row = Predictor.load(str(out), device="cpu").predict_files([str(HAND)], sex="M")[0]
    assert row.tta_sd_months is None and row.interval_level == 0.8
    half = Calibration.from_dict(cal).half_width(row.bone_age_months, None)  # the q of its band
    assert row.bone_age_interval_high - row.bone_age_months == pytest.approx(half, abs=0.02)
    assert row.bone_age_interval_low == pytest.approx(max(0.0, row.bone_age_months - half), abs=0.02)

    from boneage.train.data import in_validation as _in_validation

    held_out = [i for i in read_cache(str(calibration_cache))["id"] if _in_validation(i, 0.2)]
    assert len(held_out) < math.ceil(0.9 / 0.1) * 2  # too few for two 90% halves
    proc = run_cli("calibrate", "--model", str(model18), "--data", str(calibration_cache), "--out",
                   str(tmp_path / "x.pt"), "--val-fraction", "0.2", "--tta", "0", "--device", "cpu")
    assert proc.returncode == 2 and "too few" in proc.stderr and not (tmp_path / "x.pt").exists()


def _pdftoppm() -> str | None:
    return shutil.which("pdftoppm")


@pytest.mark.integration
def test_report_pdf_and_html_carry_every_clinical_output(calibrated, tmp_path):
    model = str(calibrated["model"])
    pdf = tmp_path / "report.pdf"
    proc = run_cli("report", str(HAND), "--sex", "M", "--chronological-age", "130", "--model", model,
                   "--out", str(pdf), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert pdf.read_bytes().startswith(b"%PDF") and "interval" in proc.stdout
    if _pdftoppm():
        subprocess.run([_pdftoppm(), "-png", "-r", "60", "-singlefile", str(pdf), str(tmp_path / "page")], check=True)
        page = cv2.imread(str(tmp_path / "page.png"), cv2.IMREAD_COLOR)
        assert page is not None and page.shape[0] > page.shape[1]  # one A4 portrait page
        # Text and three images: a real page is far from blank.
        assert (page < 128).mean() > 0.03
        assert ((page[..., 2].astype(int) - page[..., 0]) > 80).any()  # the red disclaimer / warm heatmap
    html_out = tmp_path / "report.html"
    proc = run_cli("report", str(HAND), "--sex", "M", "--chronological-age", "130", "--model", model,
                   "--out", str(html_out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    text = html_out.read_text()
    assert text.count("data:image/png;base64,") == 3
    for needle in ("90% interval", "SDS", "greulich-pyle-brush-1959", "Maturity category", "does not replace",
                   RESEARCH_USE_ONLY,
                   "UNTRAINED MODEL", "resnet18-", "Quality"):
        assert needle in text, needle
    proc = run_cli("report", str(HAND), "--sex", "M", "--out", str(tmp_path / "r.txt"), "--model", model)
    assert proc.returncode == 2 and ".pdf or .html" in proc.stderr


def test_the_shipped_model_draws_a_heatmap_and_its_report_page():
    """The shipped EfficientNet-Lite (timm) has its Grad-CAM layer: a report of a real film has a heatmap."""
    from boneage.files.images import read_image
    from boneage.predict.report import page_contents, render_rgb

    predictor = Predictor.load(None, device="cpu")
    row, original, model_input, cam, _ = page_contents(predictor, read_image(str(FIXTURES / "rsna_1377.png")), "M")
    assert row.bone_age_months is not None and cam is not None
    assert cam.shape == model_input.shape and cam.max() == pytest.approx(1.0) and 0.01 < cam.mean() < 0.99
    page = render_rgb(row, original, model_input, cam)
    assert page.ndim == 3 and page.shape[2] == 3 and page.std() > 10
