"""Prediction intervals without retraining: test-time augmentation spread + split-conformal calibration.

The network has one output, so its uncertainty is estimated from outside: each image is also scored
in a few small, fixed affine and contrast variants (:func:`tta_variants`), and the spread (SD) of
those predictions says how stable the estimate is for that film. A labelled held-out set then fixes
the scale: the conformal quantile ``q`` of the normalised residual ``|y - pred| / (spread + eps)``
(or of the plain residual ``|y - pred|`` without TTA) makes ``pred +- q * (spread + eps)`` contain
the truth for the stated share of films drawn like the calibration set, whatever the model's
quality. The calibration lives in the checkpoint's metadata (``"calibration"``); a model without
one reports no interval.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from boneage.configs import from_known_dict

METHOD_NORMALISED = "conformal-tta-normalised"
METHOD_ABSOLUTE = "conformal-absolute"
DEFAULT_LEVEL = 0.9
DEFAULT_EPS = 1.0  # months: keeps the interval from collapsing when the TTA predictions agree exactly
CPU_TTA, GPU_TTA = 4, 8
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
    k = math.ceil((n + 1) * level)
    if k > n:
        need = math.ceil(level / (1 - level))
        raise ValueError(f"{n} calibration images are too few for a {level:.0%} interval; need at least {need}")
    return float(scores[k - 1])


def scores_of(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None, eps: float) -> np.ndarray:
    """Non-conformity scores: normalised by the TTA spread when there is one."""
    residual = np.abs(np.asarray(true, float) - np.asarray(pred, float))
    return residual if spread is None else residual / (np.asarray(spread, float) + eps)


@dataclass(frozen=True)
class Calibration:
    """What ``boneage calibrate`` stores under ``metadata["calibration"]``."""

    method: str
    level: float
    q: float
    eps: float
    tta: int  # variants per image the spread was computed from (0: no TTA, absolute residuals)
    n: int
    data: str
    coverage: dict = field(default_factory=dict)  # cross-fitted, measured on images not calibrated on
    created: str = ""

    def half_width(self, spread: float | None) -> float | None:
        if self.method == METHOD_ABSOLUTE:
            return self.q
        return None if spread is None else self.q * (float(spread) + self.eps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        if not data:
            return None
        return from_known_dict(cls, data, "calibration")


def _coverage(true, pred, spread, eps, level, calib_idx, test_idx) -> dict:
    s = None if spread is None else spread[calib_idx]
    q = conformal_quantile(scores_of(true[calib_idx], pred[calib_idx], s, eps), level)
    half = q * (np.ones(len(test_idx)) if spread is None else spread[test_idx] + eps)
    inside = np.abs(true[test_idx] - pred[test_idx]) <= half
    return {"calibrated_on": int(len(calib_idx)), "measured_on": int(len(test_idx)), "q": round(q, 4),
            "coverage": round(float(inside.mean()), 4), "mean_width_months": round(float(2 * half.mean()), 2)}


def cross_fit(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None, *, level: float, eps: float,
              seed: int = 0) -> dict:
    """Honest coverage: calibrate on one random half, measure on the other, then swap; both reported."""
    n = len(true)
    order = np.random.default_rng(seed).permutation(n)
    a, b = np.sort(order[: n // 2]), np.sort(order[n // 2:])
    first = _coverage(true, pred, spread, eps, level, a, b)
    second = _coverage(true, pred, spread, eps, level, b, a)
    covered = first["coverage"] * first["measured_on"] + second["coverage"] * second["measured_on"]
    return {"halves": [first, second], "coverage": round(covered / n, 4), "split_seed": seed}


def calibrate(true: np.ndarray, pred: np.ndarray, spread: np.ndarray | None, *, level: float = DEFAULT_LEVEL,
              eps: float = DEFAULT_EPS, tta: int = 0, data: str = "", seed: int = 0) -> Calibration:
    """Cross-fitted coverage for the record, then ``q`` from the whole labelled set."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    spread = None if spread is None else np.asarray(spread, float)
    coverage = cross_fit(true, pred, spread, level=level, eps=eps, seed=seed)
    q = conformal_quantile(scores_of(true, pred, spread, eps), level)
    return Calibration(method=METHOD_ABSOLUTE if spread is None else METHOD_NORMALISED, level=level,
                       q=round(q, 6), eps=eps if spread is not None else 0.0, tta=tta if spread is not None else 0,
                       n=len(true), data=data, coverage=coverage,
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
