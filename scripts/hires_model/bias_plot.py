"""The model card's bias plot: prediction minus truth against the true bone age, with the mean error per
age group, for each model's held-out predictions (``boneage evaluate``'s predictions.csv).

    python scripts/hires_model/bias_plot.py OUT.png "LABEL=path/predictions.csv" ...
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

EDGES = (0, 60, 120, 168, 240)


def main(out: str, runs: list[str]) -> int:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for i, spec in enumerate(runs):
        label, path = spec.split("=", 1)
        frame = pd.read_csv(path)
        err = frame["pred"] - frame["true"]
        colour = f"C{i}"
        ax.scatter(frame["true"], err, s=8, alpha=0.35, color=colour)
        centres, means = [], []
        for lo, hi in zip(EDGES[:-1], EDGES[1:], strict=True):
            sel = (frame["true"] >= lo) & (frame["true"] < hi)
            if sel.any():
                centres.append((lo + hi) / 2)
                means.append(err[sel].mean())
        ax.plot(centres, means, "-o", color=colour, label=f"{label}: MAE {err.abs().mean():.1f}, bias {err.mean():+.1f}")
    ax.axhline(0, color="black", lw=0.8)
    for edge in EDGES[1:-1]:
        ax.axvline(edge, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("true bone age (months); groups: under 5 y, 5-10, 10-14, 14 and over")
    ax.set_ylabel("prediction - truth (months)")
    ax.set_title("Error by age on held-out full-size films (dots: films; lines: mean per age group)")
    ax.set_ylim(-60, 60)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
