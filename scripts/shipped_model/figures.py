"""Markdown tables of held-out figures from ``boneage evaluate`` folders, for the README and notes.

    .venv/bin/python scripts/shipped_model/figures.py out/shipped-model/eval-lite0 out/shipped-model/eval-resnet34
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETS = {"a": "(a) 10% id-hash split of the 12,611, 100 px", "b": "(b) 150 full-size `rsna/val` films",
        "c": "(c) 52 full-size `rsna/train` films"}


def row(name: str, o: dict, mean_mae: float) -> str:
    r2 = "" if o["r2"] is None else f"{o['r2']:.2f}"
    return (f"| {name} | {o['n']} | {o['mae']:.1f} | {o['rmse']:.1f} | {r2} | {100 * o['within_12m']:.0f}% "
            f"| {mean_mae:.1f} |")


def main() -> None:
    for folder in map(Path, sys.argv[1:]):
        print(f"\n### {folder.name}\n")
        print("| held-out set | n | MAE | RMSE | R^2 | within +-12 m | mean predictor MAE |")
        print("|---|---|---|---|---|---|---|")
        reports = {k: json.loads((folder / k / "metrics.json").read_text()) for k in SETS if (folder / k).exists()}
        for key, report in reports.items():
            print(row(SETS[key], report["overall"], report["mean_predictor_mae"]))
        print("\n| MAE by group | " + " | ".join(SETS[k].split(" ", 1)[0] for k in reports) + " |")
        print("|---|" + "---|" * len(reports))
        groups = list(next(iter(reports.values()))["by_age_group"]) + ["male", "female"]
        for group in groups:
            cells = []
            for report in reports.values():
                figures = report["by_age_group"].get(group) or report["by_sex"].get(group) or {}
                cells.append(f"{figures['mae']:.1f} (n {figures['n']}, mean pred. {figures.get('mean_predictor_mae', float('nan')):.1f})"
                             if figures.get("n") else "-")
            print(f"| {group} | " + " | ".join(cells) + " |")
        for key, report in reports.items():
            if report.get("interval"):
                i = report["interval"]
                print(f"\n{SETS[key]}: {100 * i['level']:.0f}% interval coverage {100 * i['coverage']:.1f}% "
                      f"(n {i['n']}), mean width {i['mean_width_months']:.1f} months")


if __name__ == "__main__":
    main()
