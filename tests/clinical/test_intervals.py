"""Age-conditional conformal intervals (bands scaled, or Mondrian) and the linear recalibration, on constructed numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from boneage.clinical.intervals import (
    DEFAULT_BANDS,
    METHOD_ABSOLUTE,
    Calibration,
    IntervalMethod,
    band_index,
    band_names,
    calibrate,
    conformal_quantile,
    fit_linear_recalibration,
    measure,
)

# A model twice as unsure of teenagers as of toddlers: residual SD (months) per band of DEFAULT_BANDS.
NOISE = (4.0, 8.0, 16.0, 12.0)


def _films(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(truth, prediction): predictions spread over every band, residuals as wide as NOISE says."""
    pred = rng.uniform(0.0, 228.0, n)
    return pred + rng.normal(0.0, np.asarray(NOISE)[band_index(pred, DEFAULT_BANDS)]), pred


def test_bands_are_named_and_found_by_the_predicted_age():
    assert band_names(DEFAULT_BANDS) == ["0-60", "60-120", "120-168", "168+"]
    assert band_index([0.0, 59.9, 60.0, 119.0, 120.0, 167.9, 168.0, 240.0], DEFAULT_BANDS).tolist() == [
        0, 0, 1, 1, 2, 2, 3, 3]


def test_each_band_gets_its_own_quantile():
    # Residuals 1..10 in the under-5 band, 11..20 in each other band: the 90% quantile of each set.
    pred = np.repeat([30.0, 90.0, 140.0, 200.0], 10)
    residual = np.concatenate([np.arange(1.0, 11.0)] + [np.arange(11.0, 21.0)] * 3)
    cal = calibrate(pred + residual, pred, None, IntervalMethod(level=0.9, band_method="quantile"))
    assert cal.method == METHOD_ABSOLUTE and cal.band_edges == list(DEFAULT_BANDS)
    assert [band["n"] for band in cal.bands] == [10, 10, 10, 10]
    assert [band["q"] for band in cal.bands] == [10.0, 20.0, 20.0, 20.0]  # ceil(11 * 0.9) = 10th smallest
    assert not any(band["pooled"] for band in cal.bands)
    assert cal.q == conformal_quantile(residual, 0.9)
    assert cal.half_width(30.0, None) == 10.0 and cal.half_width(150.0, None) == 20.0
    assert [band["band"] for band in cal.coverage["by_band"]] == band_names(DEFAULT_BANDS)


def test_a_band_with_too_few_films_takes_the_pooled_quantile_and_says_so():
    pred = np.concatenate([np.full(20, 30.0), np.full(5, 200.0)])  # 5 teenagers: too few for 90%
    true = pred + np.concatenate([np.arange(1.0, 21.0), np.full(5, 50.0)])
    cal = calibrate(true, pred, None, IntervalMethod(level=0.9, band_method="quantile"))
    teen = cal.bands[3]
    assert teen["n"] == 5 and teen["pooled"] is True and teen["q"] == cal.q
    assert cal.bands[1]["n"] == 0 and cal.bands[1]["pooled"] is True  # an empty band too
    assert cal.bands[0]["pooled"] is False and cal.bands[0]["q"] == 19.0
    assert cal.half_width(210.0, None) == cal.q


def test_per_band_coverage_holds_on_fresh_films_where_a_pooled_quantile_fails_the_noisy_band():
    rng = np.random.default_rng(7)
    mondrian, scaled, pooled = [], [], []
    for _ in range(40):
        true, pred = _films(400, rng)
        new_true, new_pred = _films(4000, rng)
        for method, out in ((IntervalMethod(level=0.9, band_method="quantile"), mondrian),
                            (IntervalMethod(level=0.9, band_method="scale"), scaled),
                            (IntervalMethod(level=0.9, bands=None), pooled)):
            cal = calibrate(true, pred, None, method)
            inside = np.abs(new_true - new_pred) <= cal.half_widths(new_pred, None)
            idx = band_index(new_pred, DEFAULT_BANDS)
            out.append([inside[idx == b].mean() for b in range(len(NOISE))])
    mondrian, scaled, pooled = (np.mean(runs, axis=0) for runs in (mondrian, scaled, pooled))
    assert np.all(mondrian >= 0.89), mondrian  # >= 0.9 in expectation in every band
    assert np.all(np.abs(scaled - 0.9) < 0.02), scaled  # residuals alike in shape: scaling fits every band
    assert pooled[2] < 0.85 and pooled[0] > 0.97, pooled  # one q: the noisy band under-covered


def test_scaled_bands_take_their_width_from_the_band_and_their_quantile_from_every_film():
    # 18 toddlers (rsna/val's smallest band has 20): a band's own 90% quantile is then its largest residual.
    rng = np.random.default_rng(11)
    pred = np.concatenate([np.full(18, 30.0), np.full(100, 150.0), np.full(3, 200.0)])
    residual = np.concatenate([rng.normal(0, 6.0, 18), rng.normal(0, 12.0, 100), rng.normal(0, 12.0, 3)])
    residual[17] = 40.0  # one toddler far off
    scaled = calibrate(pred + residual, pred, None, IntervalMethod(level=0.9))
    mondrian = calibrate(pred + residual, pred, None, IntervalMethod(level=0.9, band_method="quantile"))
    assert scaled.band_method == "scale" and mondrian.band_method == "quantile"
    toddlers, teens = scaled.bands[0], scaled.bands[3]
    assert mondrian.bands[0]["q"] == 40.0 > toddlers["q"]  # the band's max against a share of the pooled q
    mean = np.abs(residual).mean()
    assert toddlers["scale"] == pytest.approx(np.abs(residual[:18]).mean() / mean, abs=1e-5)
    assert toddlers["q"] == pytest.approx(toddlers["scale"] * scaled.bands[2]["q"] / scaled.bands[2]["scale"])
    # too few films for a scale of its own: the plain pooled quantile, as with per-band quantiles
    assert teens["n"] == 3 and teens["pooled"] and teens["scale"] == 1.0 and teens["q"] == scaled.q
    assert scaled.bands[1]["n"] == 0 and scaled.bands[1]["pooled"]
    assert scaled.half_width(30.0, None) == toddlers["q"]
    assert Calibration.from_dict(json.loads(json.dumps(scaled.to_dict()))) == scaled
    with pytest.raises(ValueError, match="band method"):
        calibrate(pred + residual, pred, None, IntervalMethod(band_method="isotonic"))


def test_scaled_bands_never_divide_by_zero_and_scale_the_tta_normalised_scores_too():
    pred = np.repeat([30.0, 90.0, 140.0, 200.0], 12)
    exact = calibrate(pred, pred, None, IntervalMethod(level=0.9))  # a perfect model: every residual 0
    assert [band["q"] for band in exact.bands] == [0.0] * 4 and all(band["pooled"] for band in exact.bands)
    residual = np.concatenate([np.zeros(12), np.tile(np.arange(1.0, 13.0), 3)])  # one band exactly right
    cal = calibrate(pred + residual, pred, None, IntervalMethod(level=0.9))
    assert np.all(np.isfinite([band["q"] for band in cal.bands]))
    assert cal.bands[0]["pooled"] and cal.bands[0]["q"] == cal.q  # no zero-width band
    # With test-time spreads, the scores (residual / (spread + eps)) are what is scaled; widths follow the spread.
    spread = np.full(pred.size, 3.0)
    tta = calibrate(pred + residual, pred, spread, IntervalMethod(level=0.9))
    assert tta.band_method == "scale" and tta.bands[2]["scale"] == cal.bands[2]["scale"]
    assert tta.half_width(140.0, 3.0) == pytest.approx(tta.bands[2]["q"] * 4.0)
    assert tta.half_width(140.0, 7.0) == pytest.approx(2 * tta.half_width(140.0, 3.0))


def test_cross_fitting_reports_coverage_and_width_per_band_on_the_half_not_calibrated_on():
    true, pred = _films(600, np.random.default_rng(3))
    cal = calibrate(true, pred, None, IntervalMethod(level=0.9))
    report = cal.coverage
    for half in report["halves"]:
        assert sum(band["measured_on"] for band in half["by_band"]) == half["measured_on"] == 300
        assert [band["n"] for band in half["bands"]] and half["calibrated_on"] == 300
    by_band = report["by_band"]
    assert sum(band["measured_on"] for band in by_band) == 600
    widths = [band["mean_width_months"] for band in by_band]
    assert widths[0] < widths[1] < widths[2]  # the noisier band is measured wider
    assert all(0.8 <= band["coverage"] <= 1.0 for band in by_band)
    # The same measure on fresh films: about the level, each band counted, the noisier band wider.
    fresh = measure(cal, *_films(4000, np.random.default_rng(4)))
    assert fresh["measured_on"] == 4000 == sum(band["measured_on"] for band in fresh["by_band"])
    assert 0.87 <= fresh["coverage"] <= 0.93
    assert fresh["by_band"][0]["mean_width_months"] < fresh["by_band"][2]["mean_width_months"]
    # A pooled calibration is measured per band too (by the default bands).
    assert len(calibrate(true, pred, None, IntervalMethod(bands=None)).coverage["by_band"]) == len(NOISE)


def test_linear_recalibration_is_fitted_stored_and_the_interval_is_on_its_residuals():
    truth = np.linspace(10.0, 210.0, 60)
    pred = 0.8 * truth + 30.0 + np.tile([-2.0, 2.0], 30)  # young placed too old, old too young
    slope, intercept = fit_linear_recalibration(truth, pred)
    assert slope == pytest.approx(1.25, abs=0.01) and intercept == pytest.approx(-37.5, abs=1.0)
    cal = calibrate(truth, pred, None, IntervalMethod(level=0.9, bands=None, recalibrate="inverse"))
    assert cal.recalibrate == [slope, intercept]
    assert cal.point(pred) == pytest.approx(slope * pred + intercept)
    # The quantile is of the residuals after recalibration (about +-2.5 months), not of the raw ones.
    assert cal.q < 3.0 < 10.0 < calibrate(truth, pred, None, IntervalMethod(level=0.9, bands=None)).q
    assert cal.half_width(100.0, None) == cal.q
    assert all("recalibrate" in half for half in cal.coverage["halves"])
    assert calibrate(truth, pred, None).recalibrate is None  # off by default


def test_the_inverse_recalibration_is_unbiased_at_every_true_age_where_least_squares_is_not():
    """A weak signal regresses to the mean: young children placed too old, old ones too young. The line
    fitted the other way round (prediction on truth), inverted, removes that bias; least squares keeps it."""
    rng = np.random.default_rng(3)
    truth = rng.uniform(10.0, 220.0, 4000)
    pred = 0.7 * truth + 40.0 + rng.normal(0.0, 12.0, truth.size)

    def worst_bias(slope_intercept):
        err = slope_intercept[0] * pred + slope_intercept[1] - truth
        return max(abs(err[(truth >= lo) & (truth < lo + 50)].mean()) for lo in (10, 60, 110, 160))

    inverse, least_squares = (fit_linear_recalibration(truth, pred, m) for m in ("inverse", "least-squares"))
    assert worst_bias(inverse) < 1.5 < 4.0 < worst_bias(least_squares)
    assert worst_bias((1.0, 0.0)) > 20.0  # the raw predictions' tilt
    with pytest.raises(ValueError, match="one of"):
        fit_linear_recalibration(truth, pred, "isotonic")


def test_calibrations_written_before_bands_still_load_and_give_their_old_interval():
    old = {"method": "conformal-absolute", "level": 0.9, "q": 25.247437, "eps": 0.0, "tta": 0, "n": 122,
           "data": "cache: 122 labelled images", "coverage": {"coverage": 0.8934}, "created": "2026-11-23T12:37:09"}
    cal = Calibration.from_dict(old)
    assert cal.band_edges == [] and cal.bands == [] and cal.recalibrate is None
    assert cal.band_method == "quantile"  # what every calibration before "scale" was
    assert cal.half_width(30.0, None) == cal.half_width(200.0, None) == 25.247437
    assert cal.point(123.4) == 123.4
    normalised = Calibration.from_dict({**old, "method": "conformal-tta-normalised", "q": 2.0, "eps": 1.0, "tta": 4})
    assert normalised.half_width(100.0, 3.0) == 8.0 and normalised.half_width(100.0, None) is None
    # a banded one from before "scale" (the shipped model's until 2026-12-04) gives each band's q as stored
    banded = Calibration.from_dict({**old, "band_edges": [60.0, 120.0, 168.0], "bands": [
        {"band": "0-60", "n": 20, "q": 24.10349, "pooled": False}, {"band": "60-120", "n": 29, "q": 24.145221,
                                                                  "pooled": False},
        {"band": "120-168", "n": 69, "q": 21.209141, "pooled": False}, {"band": "168+", "n": 31, "q": 15.200742,
                                                                       "pooled": False}]})
    assert banded.band_method == "quantile"
    assert [banded.half_width(p, None) for p in (30.0, 90.0, 140.0, 200.0)] == [24.10349, 24.145221, 21.209141,
                                                                                  15.200742]
    # and a new one survives its own round trip through the checkpoint's metadata
    true, pred = _films(100, np.random.default_rng(1))
    new = calibrate(true, pred, None, IntervalMethod(recalibrate="inverse"))
    assert Calibration.from_dict(new.to_dict()) == new
