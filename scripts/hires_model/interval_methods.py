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

from boneage.clinical import BAND_METHODS
from boneage.clinical.intervals import IntervalMethod, cross_fit, fit_calibration, measure

METHODS = {"pooled": IntervalMethod(bands=None, recalibrate="inverse"),
           **{f"bands, {m}": IntervalMethod(band_method=m, recalibrate="inverse") for m in BAND_METHODS}}


def measured(cal, true: np.ndarray, pred: np.ndarray) -> str:
    """Coverage and mean width, overall and per band of the (recalibrated) prediction."""
    got = measure(cal, true, pred)
    bands = " / ".join(f"{b['coverage']:.0%} {b['mean_width_months']:.0f}" if b["measured_on"] else "-"
                       for b in got["by_band"])
    return f"{got['coverage']:.1%}, {got['mean_width_months']:.1f} ({bands})"


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
        runs = [cross_fit(true, pred, None, replace(method, seed=seed)) for seed in range(args.seeds)]
        widths = [h["mean_width_months"] for run in runs for h in run["halves"]]
        crossed = f"{np.mean([run['coverage'] for run in runs]):.1%}, {np.mean(widths):.1f}"
        print(f"| {name} | " + " | ".join(measured(cal, *tests[t]) for t in tests) + f" | {crossed} |")


if __name__ == "__main__":
    main()
