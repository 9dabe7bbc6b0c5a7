"""Held-out figures of several models' predictions, side by side, and of their averages (ensembles).

    python scripts/hires_model/compare.py NAME=eval/predictions.csv ... [--mean A+B] [--json OUT]

Reads the ``predictions.csv`` of ``boneage evaluate`` (id, true, pred, male). Age groups are the
issue's: under 5 years, 5-10, 10-14, 14 and over, by true bone age; the bias is the mean of
prediction minus truth. ``--against NAME`` adds each run's MAE difference from NAME's with a paired bootstrap interval, and
the JSON holds each bias's 95% half-width. ``--by-pred`` groups by the prediction instead (a bias that vanishes when grouped
by prediction is regression to the mean, not a shift).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pandas as pd

GROUPS = (("<5y", 0, 60), ("5-10y", 60, 120), ("10-14y", 120, 168), (">=14y", 168, 1e9))


def figures(frame: pd.DataFrame, by: str = "true") -> dict:
    """MAE, RMSE, bias and within +-12 months: overall, per age group and per sex."""
    def one(sel: pd.DataFrame) -> dict:
        err = sel["pred"] - sel["true"]
        if err.empty:
            return {"n": 0}
        return {"n": int(len(err)), "mae": round(float(err.abs().mean()), 2),
                "rmse": round(float(np.sqrt((err**2).mean())), 2), "bias": round(float(err.mean()), 2),
                # the bias's 95% half-width: with 20-30 children in a group it is 3-6 months
                "bias_ci95": round(float(1.96 * err.std() / np.sqrt(len(err))), 2) if len(err) > 1 else None,
                "within_12m": round(float((err.abs() <= 12).mean()), 3)}
    out = {"overall": one(frame)}
    for name, lo, hi in GROUPS:
        out[name] = one(frame[(frame[by] >= lo) & (frame[by] < hi)])
    out["male"], out["female"] = one(frame[frame["male"] >= 0.5]), one(frame[frame["male"] < 0.5])
    return out


def crossfit(frame: pd.DataFrame, method: str, seed: int = 0) -> pd.DataFrame:
    """The predictions after a recalibration fitted on the other random half of the films."""
    from boneage.clinical.intervals import fit_linear_recalibration

    order = np.random.default_rng(seed).permutation(len(frame))
    halves = (order[: len(frame) // 2], order[len(frame) // 2:])
    out = frame.copy()
    true, pred = frame["true"].to_numpy(float), frame["pred"].to_numpy(float)
    for fit, test in (halves, halves[::-1]):
        slope, intercept = fit_linear_recalibration(true[fit], pred[fit], method)
        out.iloc[test, out.columns.get_loc("pred")] = slope * pred[test] + intercept
    return out


def read_predictions(paths: list[str]) -> pd.DataFrame:
    """One set's ``predictions.csv``, or several pooled (each id prefixed by its file's place in the list, so
    the same film in two sets stays two rows): a pooled set narrows a paired interval."""
    frames = [pd.read_csv(path, dtype={"id": str})[["id", "true", "pred", "male"]] for path in paths]
    if len(frames) > 1:
        frames = [f.assign(id=f"{k}:" + f["id"]) for k, f in enumerate(frames)]
    return pd.concat(frames, ignore_index=True)


def paired_difference(frame: pd.DataFrame, reference: pd.DataFrame, draws: int = 2000,
                      seed: int = 0) -> dict:
    """MAE of ``frame`` minus that of ``reference`` on the films both scored, with a 95% paired bootstrap
    interval: two runs on the same 100-odd films differ by noise of about half a month, so a gap needs its
    interval before it means anything."""
    both = frame.merge(reference, on="id", suffixes=("", "_ref"))
    diff = ((both["pred"] - both["true"]).abs() - (both["pred_ref"] - both["true_ref"]).abs()).to_numpy(float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": int(len(diff)), "mae_difference": round(float(diff.mean()), 2),
            "ci95": [round(float(low), 2), round(float(high), 2)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=path/to/predictions.csv, or NAME=a.csv,b.csv to pool sets")
    parser.add_argument("--mean", action="append", default=[], help="A+B: the average of runs A and B, by id")
    parser.add_argument("--crossfit", action="append", default=[], metavar="NAME",
                        help="add NAME's predictions after a linear recalibration fitted on the other half of the "
                             "same films (two random halves, each measured with the line of the other)")
    parser.add_argument("--recalibration", default="inverse", help="how --crossfit fits the line")
    parser.add_argument("--by-pred", action="store_true", help="age groups by prediction, not by truth")
    parser.add_argument("--against", metavar="NAME",
                        help="also give each run's MAE minus NAME's on the same films, with a 95%% paired "
                             "bootstrap interval")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    frames = {}
    for spec in args.runs:
        name, paths = spec.split("=", 1)
        frames[name] = read_predictions(paths.split(","))
    for spec in args.mean:
        parts = spec.split("+")
        joined = frames[parts[0]].set_index("id")
        preds = [frames[p].set_index("id")["pred"] for p in parts]
        common = joined.index.intersection(pd.concat(preds, axis=1).dropna().index)
        frame = joined.loc[common].copy()
        frame["pred"] = np.mean([p.loc[common] for p in preds], axis=0)
        frames[spec] = frame.reset_index()
    for name in args.crossfit:
        frames[f"{name} recalibrated (cross-fitted)"] = crossfit(frames[name], args.recalibration)
    table = {name: figures(frame, "pred" if args.by_pred else "true") for name, frame in frames.items()}
    keys = ["overall", *(g[0] for g in GROUPS), "male", "female"]
    print("| run | " + " | ".join(f"{k} MAE / bias (n)" for k in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, t in table.items():
        cells = [f"{t[k]['mae']} / {t[k]['bias']:+} ({t[k]['n']})" if t[k]["n"] else "-" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.against:
        print(f"\nMAE minus {args.against}'s on the same films (95% paired bootstrap interval):")
        for name, frame in frames.items():
            if name != args.against:
                d = paired_difference(frame, frames[args.against])
                table[name]["against"] = {args.against: d}
                print(f"- {name}: {d['mae_difference']:+.2f} ({d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}), "
                      f"{d['n']} films")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
