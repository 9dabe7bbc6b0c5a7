"""Prediction intervals without retraining: test-time augmentation spread + split-conformal calibration.

The network has one output, so its uncertainty is estimated from outside: each image is also scored
in a few small, fixed affine and contrast variants (:func:`tta_variants`), and the spread (SD) of
those predictions says how stable the estimate is for that film. A labelled held-out set then fixes
the scale: the conformal quantile ``q`` of the normalised residual ``|y - pred| / (spread + eps)``
(or of the plain residual ``|y - pred|`` without TTA) makes ``pred +- q * (spread + eps)`` contain
the truth for the stated share of films drawn like the calibration set, whatever the model's
quality (exactly for one pooled quantile and for ``quantile`` bands, approximately for ``scale``
bands, whose scales are taken from the same films). That share holds on average over ages; a model is
better at some ages than others, so the width follows the band of the predicted bone age
(:data:`DEFAULT_BANDS`): by default each band's residuals are divided by the band's mean residual
before one quantile is taken over all films (``scale``), or each band takes its own quantile
(``quantile``, Mondrian split conformal: the level then holds within each band, at the price of width
where a band has few films). An optional linear recalibration of the point estimate (stored with the
quantiles) corrects a systematic tilt first. The calibration lives in the checkpoint's metadata
(``"calibration"``); a model without one reports no interval.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from boneage.clinical import (
    BAND_METHODS,
    CPU_TTA,
    DEFAULT_BANDS,
    DEFAULT_EPS,
    DEFAULT_LEVEL,
    GPU_TTA,
    MIN_BAND_FILMS,
    RECALIBRATIONS,
)
from boneage.configs import from_known_dict

METHOD_NORMALISED = "conformal-tta-normalised"
METHOD_ABSOLUTE = "conformal-absolute"
TTA_SEED = 20240901
# Variants stay small: a radiologist's film is never rotated by 20 degrees the way training augments it.
MAX_ROTATION_DEG, MAX_TRANSLATE, MAX_ZOOM, MAX_CONTRAST, MAX_BRIGHTNESS = 5.0, 0.03, 0.05, 0.10, 0.05


@dataclass(frozen=True)
class Variant:
    """One test-time variant; the first of every list is the unaltered image."""

    angle: float = 0.0
    translate: tuple[float, float] = (0.0, 0.0)  # fractions of width and height
    scale: float = 1.0
    contrast: float = 1.0
    brightness: float = 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1 x H x W in [0, 1] -> the same batch, all with this variant's parameters."""
        if self == Variant():
            return x
        h, w = x.shape[-2:]
        y = TF.affine(x, angle=self.angle, translate=[self.translate[0] * w, self.translate[1] * h],
                      scale=self.scale, shear=[0.0, 0.0], fill=0.0)
        y = TF.adjust_contrast(y, self.contrast)
        return TF.adjust_brightness(y, self.brightness).clamp_(0.0, 1.0)


def tta_variants(n: int, seed: int = TTA_SEED) -> list[Variant]:
    """``n`` fixed variants (the identity first), the same on every machine and every call."""
    rng = np.random.default_rng(seed)
    variants = [Variant()]
    while len(variants) < n:
        u = rng.uniform(-1.0, 1.0, size=6)
        variants.append(Variant(angle=float(u[0] * MAX_ROTATION_DEG),
                                translate=(float(u[1] * MAX_TRANSLATE), float(u[2] * MAX_TRANSLATE)),
                                scale=float(1 + u[3] * MAX_ZOOM), contrast=float(1 + u[4] * MAX_CONTRAST),
                                brightness=float(1 + u[5] * MAX_BRIGHTNESS)))
    return variants[: max(n, 1)]


def default_tta(device: torch.device | str) -> int:
    """How many variants when nobody says: each one is a full forward pass."""
    return GPU_TTA if torch.device(device).type == "cuda" else CPU_TTA


def conformal_quantile(scores: Sequence[float] | np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n + 1) * level)-th smallest score.

    With exchangeable data this guarantees coverage of at least ``level``. Too few scores for the
    level (n < level / (1 - level)) cannot guarantee it: that is an error, not an infinite interval.
    """
    scores = np.sort(np.asarray(scores, dtype=float))
    n = len(scores)
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if not enough_for(n, level):
        need = math.ceil(level / (1 - level))
        raise ValueError(f"{n} calibration images are too few for a {level:.0%} interval; need at least {need}")
    return float(scores[math.ceil((n + 1) * level) - 1])


def enough_for(n: int, level: float) -> bool:
    """Whether ``n`` scores can give a conformal quantile at ``level`` (ceil((n + 1) * level) <= n)."""
    return math.ceil((n + 1) * level) <= n


def scores_of(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None, eps: float) -> np.ndarray:
    """Non-conformity scores: normalised by the TTA spread when there is one."""
    residual = np.abs(np.asarray(true, float) - np.asarray(pred, float))
    return residual if spread is None else residual / (np.asarray(spread, float) + eps)


def band_index(pred: float | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The band of each predicted bone age: 0 below the first edge, len(edges) at or above the last."""
    return np.searchsorted(np.asarray(edges, float), np.asarray(pred, float), side="right")


def band_names(edges: Sequence[float]) -> list[str]:
    """``[60, 120]`` -> ``["0-60", "60-120", "120+"]`` (months of predicted bone age)."""
    bounds = [0.0, *edges]
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(bounds, edges, strict=False)] + [f"{bounds[-1]:g}+"]


def band_quantiles(scores: np.ndarray, pred: np.ndarray, edges: Sequence[float], level: float,
                   pooled: float) -> list[dict]:
    """Mondrian split-conformal: one quantile per band of the predicted bone age, so the level holds
    within each band, not only on average over ages. A band with too few films for the level takes
    ``pooled`` instead (``"pooled": true``), which guarantees only the average."""
    idx = band_index(pred, edges)
    bands = []
    for b, name in enumerate(band_names(edges)):
        mine = scores[idx == b]
        own = enough_for(len(mine), level)
        bands.append({"band": name, "n": int(len(mine)), "q": round(conformal_quantile(mine, level) if own else pooled, 6),
                      "pooled": not own})
    return bands


def band_scaled_quantiles(scores: np.ndarray, pred: np.ndarray, edges: Sequence[float], level: float,
                          pooled: float) -> list[dict]:
    """Each band's scores divided by the band's mean score (its ``scale``, relative to the mean over all
    films), one quantile over all films of those scaled scores, and each band's ``q`` that quantile times
    its scale: the width follows the band's error while the quantile comes from every film. The level then
    holds over all ages approximately (the scales come from the same films), not within each band. A band
    with fewer than :data:`MIN_BAND_FILMS` films, or whose residuals are all 0, takes ``pooled`` (marked
    ``"pooled": true``), as in :func:`band_quantiles`: a scale from a few residuals would be noise."""
    idx = band_index(pred, edges)
    count = np.bincount(idx, minlength=len(edges) + 1)
    means = np.asarray([scores[idx == b].mean() if count[b] else 0.0 for b in range(len(count))])
    total = float(scores.mean())
    own = (count >= MIN_BAND_FILMS) & (means > 0)  # a band with a positive mean makes the total positive
    scale = np.ones(len(count))
    scale[own] = means[own] / total
    q = conformal_quantile(scores / scale[idx], level)
    return [{"band": name, "n": int(count[b]), "q": round(q * float(scale[b]) if own[b] else pooled, 6),
             "scale": round(float(scale[b]), 6), "pooled": not bool(own[b])}
            for b, name in enumerate(band_names(edges))]


def fit_linear_recalibration(true: Sequence[float] | np.ndarray, pred: Sequence[float] | np.ndarray,
                             method: str = "inverse") -> tuple[float, float]:
    """(slope, intercept) so that ``slope * pred + intercept`` undoes a systematic tilt and shift of the
    model (young children placed too old, old too young); ``method`` is one of :data:`RECALIBRATIONS`."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    if method == "least-squares":
        slope, intercept = np.polyfit(pred, true, 1)
    elif method == "inverse":
        a, b = np.polyfit(true, pred, 1)
        if a <= 0:
            raise ValueError("the predictions do not rise with the true bone age: no recalibration can be fitted")
        slope, intercept = 1.0 / a, -b / a
    else:
        raise ValueError(f"recalibration must be one of {RECALIBRATIONS}, not {method!r}")
    return round(float(slope), 6), round(float(intercept), 6)


@dataclass(frozen=True)
class Calibration:
    """What ``boneage calibrate`` stores under ``metadata["calibration"]``.

    ``q`` is the quantile pooled over every calibration film. With ``band_edges`` (months of the
    predicted bone age) ``bands`` holds each band's ``q``, made as ``band_method`` says: the pooled
    quantile of scaled residuals times the band's ``scale``, or the band's own quantile; a band with too
    few films takes the pooled one (marked ``pooled``). ``recalibrate`` ([slope, intercept]) moves the
    point estimate before the interval, whose quantiles were taken on the residuals after it.
    Calibrations written before bands and recalibration load with neither.
    """

    method: str
    level: float
    q: float
    eps: float
    tta: int  # variants per image the spread was computed from (0: no TTA, absolute residuals)
    n: int
    data: str
    coverage: dict = field(default_factory=dict)  # cross-fitted, measured on images not calibrated on
    created: str = ""
    band_edges: list[float] = field(default_factory=list)
    bands: list[dict] = field(default_factory=list)  # per band: band, n, q, pooled (and scale)
    band_method: str = "quantile"  # BAND_METHODS; calibrations written before "scale" were per-band quantiles
    recalibrate: list[float] | None = None  # [slope, intercept]
    recalibration: str | None = None  # how it was fitted (RECALIBRATIONS)

    def point(self, pred: float | np.ndarray) -> float | np.ndarray:
        """The model's bone age after the stored linear recalibration (unchanged without one); a line
        steeper than 1 would take the youngest below 0 months, so it stops at 0."""
        if not self.recalibrate:
            return pred
        slope, intercept = self.recalibrate
        return np.maximum(slope * np.asarray(pred, float) + intercept, 0.0)

    def half_widths(self, pred: np.ndarray, spread: np.ndarray | None) -> np.ndarray | None:
        """Half the interval around each (recalibrated) ``pred``: its band's q, times ``spread + eps`` for
        the TTA-normalised method (None without a spread there)."""
        pred = np.asarray(pred, float)
        if self.band_edges:
            q = np.asarray([band["q"] for band in self.bands], float)[band_index(pred, self.band_edges)]
        else:
            q = np.full(pred.shape, self.q)
        if self.method == METHOD_ABSOLUTE:
            return q
        return None if spread is None else q * (np.asarray(spread, float) + self.eps)

    def half_width(self, pred: float, spread: float | None) -> float | None:
        """:meth:`half_widths` of one film."""
        half = self.half_widths(np.asarray([pred], float), None if spread is None else np.asarray([spread], float))
        return None if half is None else float(half[0])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        if not data:
            return None
        return from_known_dict(cls, data, "calibration")


@dataclass(frozen=True)
class IntervalMethod:
    """How a calibration is fitted: one option set shared by :func:`calibrate`, :func:`cross_fit` and
    :func:`fit_calibration` (so a new option is one field here, not a parameter relayed three times).

    ``bands``: edges (months of the predicted bone age) of the bands, None for one pooled quantile.
    ``band_method``: how each band gets its width, one of :data:`BAND_METHODS`. ``recalibrate``: fit and
    store a linear recalibration of the point estimate first, by one of :data:`RECALIBRATIONS`.
    ``seed``: the random halving of :func:`cross_fit`.
    """

    level: float = DEFAULT_LEVEL
    eps: float = DEFAULT_EPS
    bands: Sequence[float] | None = DEFAULT_BANDS
    band_method: str = BAND_METHODS[0]
    recalibrate: str | None = None
    seed: int = 0


def fit_calibration(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None,
                    method: IntervalMethod) -> Calibration:
    """The quantiles (pooled, and per band with ``bands``) of these films, after the linear
    recalibration (one of :data:`RECALIBRATIONS`) fitted on them when ``recalibrate``; the descriptive
    fields are left empty."""
    if method.band_method not in BAND_METHODS:
        raise ValueError(f"band method must be one of {BAND_METHODS}, not {method.band_method!r}")
    level, eps, recalibrate = method.level, method.eps, method.recalibrate
    line = list(fit_linear_recalibration(true, pred, recalibrate)) if recalibrate else None
    cal = Calibration(method=METHOD_ABSOLUTE if spread is None else METHOD_NORMALISED, level=level, q=0.0,
                      eps=eps if spread is not None else 0.0, tta=0, n=len(true), data="", recalibrate=line,
                      recalibration=recalibrate or None)
    point = cal.point(pred)
    scores = scores_of(true, point, spread, eps)
    q = round(conformal_quantile(scores, level), 6)
    edges = [float(e) for e in method.bands or ()]
    if not edges:
        return replace(cal, q=q)
    by_band = band_scaled_quantiles if method.band_method == "scale" else band_quantiles
    bands = by_band(scores, point, edges, level, q)
    return replace(cal, q=q, band_edges=edges, bands=bands, band_method=method.band_method)


def _measure(true, pred, spread, test_idx, cal: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside the interval, half width, recalibrated prediction) of each test film, under a calibration
    made without it."""
    point = cal.point(pred[test_idx])
    half = cal.half_widths(point, None if spread is None else spread[test_idx])
    return np.abs(true[test_idx] - point) <= half, half, point


def _summary(inside: np.ndarray, half: np.ndarray) -> dict:
    if not len(inside):
        return {"measured_on": 0, "coverage": None, "mean_width_months": None}
    return {"measured_on": int(len(inside)), "coverage": round(float(inside.mean()), 4),
            "mean_width_months": round(float(2 * half.mean()), 2)}


def _by_band(inside: np.ndarray, half: np.ndarray, point: np.ndarray, edges: Sequence[float]) -> list[dict]:
    idx = band_index(point, edges)
    return [{"band": name, **_summary(inside[idx == b], half[idx == b])} for b, name in enumerate(band_names(edges))]


def measure(cal: Calibration, true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None = None,
            edges: Sequence[float] = DEFAULT_BANDS) -> dict:
    """Coverage and mean width of ``cal``'s interval on labelled films it was not fitted on (the model's
    raw predictions), overall and per band of the recalibrated prediction: what :func:`cross_fit` reports
    for each half, for any held-out set."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    inside, half, point = _measure(true, pred, spread, np.arange(len(true)), cal)
    return {**_summary(inside, half), "by_band": _by_band(inside, half, point, edges)}


def cross_fit(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None, method: IntervalMethod) -> dict:
    """Honest coverage: calibrate on one random half (bands and recalibration included), measure on
    the other, then swap; both halves reported, and the coverage and mean width in each band of the
    predicted bone age (``method.bands``, else :data:`DEFAULT_BANDS`: a pooled interval is checked per age
    too)."""
    n = len(true)
    order = np.random.default_rng(method.seed).permutation(n)
    a, b = np.sort(order[: n // 2]), np.sort(order[n // 2:])
    edges = list(method.bands or DEFAULT_BANDS)
    halves, measured = [], []
    for calib_idx, test_idx in ((a, b), (b, a)):
        cal = fit_calibration(true[calib_idx], pred[calib_idx], None if spread is None else spread[calib_idx],
                              method)
        inside, half, point = _measure(true, pred, spread, test_idx, cal)
        measured.append((inside, half, point))
        halves.append({"calibrated_on": int(len(calib_idx)), "q": round(cal.q, 4), **_summary(inside, half),
                       **({"bands": cal.bands} if cal.bands else {}),
                       **({"recalibrate": cal.recalibrate} if cal.recalibrate else {}),
                       "by_band": _by_band(inside, half, point, edges)})
    inside, half, point = (np.concatenate(parts) for parts in zip(*measured, strict=True))
    return {"halves": halves, "coverage": round(float(inside.mean()), 4), "by_band": _by_band(inside, half, point, edges),
            "split_seed": method.seed}


def calibrate(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None,
              method: IntervalMethod = IntervalMethod(), *, tta: int = 0, data: str = "") -> Calibration:
    """Cross-fitted coverage for the record, then the quantiles from the whole labelled set."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    spread = None if spread is None else np.asarray(spread, float)
    coverage = cross_fit(true, pred, spread, method)
    cal = fit_calibration(true, pred, spread, method)
    return replace(cal, tta=tta if spread is not None else 0, data=data, coverage=coverage,
                   created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
