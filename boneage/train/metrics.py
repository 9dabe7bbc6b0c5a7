"""The seed's evaluation figures: MAE, RMSE, R^2 and accuracy within +-6 / +-12 months, overall,
per age group and per sex. Plain numpy, so training, ``boneage evaluate`` and tests agree exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AGE_GROUPS_YEARS: tuple[tuple[int, int], ...] = ((0, 5), (5, 10), (10, 15), (15, 19))
TOLERANCES_MONTHS: tuple[int, ...] = (6, 12)


def regression_metrics(pred: Sequence[float], true: Sequence[float]) -> dict:
    """Figures for one set of predictions; an empty set gives ``n = 0`` and no figures."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"{p.shape[0]} predictions but {t.shape[0]} true values")
    if p.size == 0:
        return {"n": 0}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    out = {
        "n": int(p.size),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1.0 - (err**2).sum() / ss_tot) if ss_tot > 0 else None,
        "mean_error": float(err.mean()),
    }
    for tol in TOLERANCES_MONTHS:
        out[f"within_{tol}m"] = float((np.abs(err) <= tol).mean())
    return out


def age_group(months: float) -> str:
    """Group name by bone age; ages outside 0-19 years fall in the nearest end group."""
    years = min(max(months / 12.0, 0.0), AGE_GROUPS_YEARS[-1][1] - 1e-9)
    lo, hi = next(g for g in AGE_GROUPS_YEARS if g[0] <= years < g[1])
    return f"{lo}-{hi}y"


def evaluate(pred: Sequence[float], true: Sequence[float], male: Sequence[float] | None = None) -> dict:
    """Overall figures, then per age group (by true bone age) and per sex (when given)."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    report = {"overall": regression_metrics(p, t), "by_age_group": {}, "by_sex": {}}
    groups = np.array([age_group(v) for v in t])
    for lo, hi in AGE_GROUPS_YEARS:
        name = f"{lo}-{hi}y"
        sel = groups == name
        report["by_age_group"][name] = regression_metrics(p[sel], t[sel])
    if male is not None:
        m = np.asarray(male, dtype=np.float64)
        for name, sel in (("male", m >= 0.5), ("female", m < 0.5)):
            report["by_sex"][name] = regression_metrics(p[sel], t[sel])
    return report


def flat_metrics(report: dict, prefix: str = "val_") -> dict:
    """One level of ``{prefix}name: value`` from :func:`evaluate`'s report: what Ray Train reports per epoch."""
    overall = report["overall"]
    out = {f"{prefix}{k}": v for k, v in overall.items() if k != "n"}
    out[f"{prefix}n"] = overall.get("n", 0)
    for group, figures in report["by_age_group"].items():
        if figures.get("n"):
            out[f"{prefix}mae_{group}"] = figures["mae"]
    for sex, figures in report["by_sex"].items():
        if figures.get("n"):
            out[f"{prefix}mae_{sex}"] = figures["mae"]
    return out
