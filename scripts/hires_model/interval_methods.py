"""How wide is the interval, and how often does it hold, for each way of giving the age bands their width?

    python scripts/hires_model/interval_methods.py CALIBRATION.csv NAME=TEST.csv ... [--seeds 100]

Each CSV is the ``predictions.csv`` of ``boneage evaluate`` of the *uncalibrated* model (id, true, pred).
The interval is fitted on CALIBRATION with the project's own code (``fit_calibration``, the inverse
recalibration first, as the shipped model) and measured on each TEST set, which it never saw; the
calibration set itself is measured by cross-fitting (``cross_fit``), over ``--seeds`` random halvings
because one halving of 150 films moves the coverage by a few points.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pandas as pd

from boneage.clinical import BAND_METHODS, DEFAULT_BANDS
from boneage.clinical.intervals import IntervalMethod, band_index, cross_fit, fit_calibration

METHODS = {"pooled": IntervalMethod(bands=None, recalibrate="inverse"),
           **{f"bands, {m}": IntervalMethod(band_method=m, recalibrate="inverse") for m in BAND_METHODS}}


def measured(cal, true: np.ndarray, pred: np.ndarray) -> str:
    """Coverage and mean width, overall and per band of the (recalibrated) prediction."""
    point = cal.point(pred)
    half = cal.half_widths(point, None)
    inside = np.abs(true - point) <= half
    idx = band_index(point, DEFAULT_BANDS)
    bands = " / ".join(f"{inside[idx == b].mean():.0%} {2 * half[idx == b].mean():.0f}" if (idx == b).any() else "-"
                       for b in range(len(DEFAULT_BANDS) + 1))
    return f"{inside.mean():.1%}, {2 * half.mean():.1f} ({bands})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("calibration")
    parser.add_argument("tests", nargs="*", metavar="NAME=CSV")
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args()
    read = lambda path: pd.read_csv(path)[["true", "pred"]].to_numpy(float).T  # noqa: E731
    true, pred = read(args.calibration)
    tests = {spec.split("=", 1)[0]: read(spec.split("=", 1)[1]) for spec in args.tests}
    print("| method | " + " | ".join(f"{name}: coverage, mean width (per band)" for name in tests)
          + " | calibration set, cross-fitted: coverage, mean width |")
    print("|---" * (len(tests) + 2) + "|")
    for name, method in METHODS.items():
        cal = fit_calibration(true, pred, None, method)
        runs = [cross_fit(true, pred, None, replace(method, seed=seed))
                for seed in range(args.seeds)]
        widths = [h["mean_width_months"] for run in runs for h in run["halves"]]
        crossed = f"{np.mean([run['coverage'] for run in runs]):.1%}, {np.mean(widths):.1f}"
        print(f"| {name} | " + " | ".join(measured(cal, *tests[t]) for t in tests) + f" | {crossed} |")


if __name__ == "__main__":
    main()
