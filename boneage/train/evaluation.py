"""``boneage evaluate``: a model's figures on a labelled cache, the plots people expect, and a report.

Predictions come from the same ``Predictor`` as every other path, on the images exactly as the
preprocessing job cached them; the cache must have been made with the model's preprocessing config.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.files import storage
from boneage.files.cache import labelled_images
from boneage.files.storage import file_id
from boneage.predict.predictor import Predictor
from boneage.progress import Progress
from boneage.train.data import in_validation
from boneage.train.metrics import AGE_GROUPS_YEARS, TOLERANCES_MONTHS, age_group, evaluate


def predict_cache(predictor: Predictor, cache_uri: str, val_fraction: float | None = None) -> pd.DataFrame:
    """id, true bone age, prediction and sex for every labelled row of the cache (only the held-out
    ``val_fraction`` of ids, as ``boneage train --val-fraction`` split them, when given)."""
    keep = None if val_fraction is None else (lambda ident: in_validation(ident, val_fraction))
    rows = labelled_images(cache_uri, keep, predictor.preprocess_config.config_hash(), purpose="evaluate on")
    with Progress(len(rows.ids), "evaluating") as bar:
        pred = predictor.predict_arrays(rows.images, rows.male, on_batch=bar.update)
    if predictor.calibration is not None:  # the bone age a user gets: after its recalibration, if any
        pred = predictor.calibration.point(pred)
    return pd.DataFrame({"id": rows.ids, "true": rows.boneage, "pred": pred.astype(float), "male": rows.male})


def predict_films(predictor: Predictor, images_uri: str, labels_uri: str) -> tuple[pd.DataFrame, dict]:
    """The same columns as :func:`predict_cache`, from the original films through the path a user meets
    (read, preprocess with the model's config, predict), for every labelled file under ``images_uri``;
    and what was left out: labelled ids without a file, films that could not be scored."""
    from boneage.files.cache import read_labels
    from boneage.predict.predictor import prepare_file

    labels = {i: v for i, v in read_labels(labels_uri).items() if not (pd.isna(v.boneage) or v.male is None)}
    files = {file_id(path): path for path in storage.list_inputs([images_uri])}
    missing = sorted(set(labels) - set(files))
    if len(missing) == len(labels):
        raise FileNotFoundError(f"none of the {len(labels)} labelled ids of {labels_uri} has a file under {images_uri}")
    records, failed = [], {}
    idents = sorted(set(labels) & set(files))
    prepared = (prepare_file(files[i], predictor.preprocess_config, "M" if labels[i].male else "F") for i in idents)
    # every labelled film counts (score_anyway), its verdict beside it; batches as in predict
    scored = predictor.predict_stream(prepared, score_anyway=True)
    for ident, row in zip(idents, Progress(len(idents), "evaluating", iterable=scored), strict=True):
        if row.error:
            failed[ident] = row.error
            continue
        records.append({"id": ident, "true": labels[ident].boneage, "pred": row.bone_age_months,
                        "male": float(labels[ident].male), "low": row.bone_age_interval_low,
                        "high": row.bone_age_interval_high, "quality": (row.quality or {}).get("reasons")})
    columns = ["id", "true", "pred", "male", "low", "high", "quality"]
    return pd.DataFrame(records, columns=columns), {"labelled_without_file": missing, "failed": failed}


def _group_order() -> list[str]:
    return [f"{lo}-{hi}y" for lo, hi in AGE_GROUPS_YEARS]


def write_plots(frame: pd.DataFrame, out: Path) -> dict[str, str]:
    """Scatter with identity line, Bland-Altman, tolerance accuracy and absolute error per age group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true, pred = frame["true"].to_numpy(), frame["pred"].to_numpy()
    groups = np.array([age_group(v) for v in true])
    order = _group_order()
    files = {}

    fig, ax = plt.subplots(figsize=(5, 5))
    for male, colour, label in ((1.0, "tab:blue", "male"), (0.0, "tab:red", "female")):
        sel = frame["male"].to_numpy() == male
        ax.scatter(true[sel], pred[sel], s=14, alpha=0.7, color=colour, label=label)
    lo, hi = 0, max(240, float(np.max([true.max(), pred.max()])) + 6)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="reference bone age (months)", ylabel="predicted bone age (months)",
           title="Predicted against reference")
    ax.legend(loc="upper left")
    files["scatter"] = "scatter.png"

    def save(name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / files[name], dpi=110)
        plt.close(fig)

    save("scatter")

    fig, ax = plt.subplots(figsize=(6, 4))
    mean, diff = (true + pred) / 2, pred - true
    bias, spread = diff.mean(), 1.96 * diff.std(ddof=1) if len(diff) > 1 else 0.0
    ax.scatter(mean, diff, s=14, alpha=0.7)
    for y, style, text in ((bias, "-", f"bias {bias:+.1f}"), (bias + spread, "--", f"+1.96 SD {bias + spread:+.1f}"),
                           (bias - spread, "--", f"-1.96 SD {bias - spread:+.1f}")):
        ax.axhline(y, color="k", ls=style, lw=1)
        ax.text(ax.get_xlim()[1], y, f" {text}", va="center", fontsize=8)
    ax.set(xlabel="mean of predicted and reference (months)", ylabel="predicted - reference (months)",
           title="Bland-Altman")
    files["bland_altman"] = "bland_altman.png"
    save("bland_altman")

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(TOLERANCES_MONTHS)
    err = np.abs(pred - true)
    for k, tol in enumerate(TOLERANCES_MONTHS):
        values = [float((err[groups == g] <= tol).mean()) if (groups == g).any() else 0.0 for g in order]
        ax.bar(np.arange(len(order)) + k * width, values, width, label=f"within +-{tol} months")
    ax.set_xticks(np.arange(len(order)) + width * (len(TOLERANCES_MONTHS) - 1) / 2,
                  [f"{g}\n(n={(groups == g).sum()})" for g in order])
    ax.set(ylim=(0, 1), ylabel="share of images", title="Tolerance accuracy per age group")
    ax.legend()
    files["tolerance"] = "tolerance_by_age_group.png"
    save("tolerance")

    fig, ax = plt.subplots(figsize=(6, 4))
    data = [err[groups == g] for g in order]
    ax.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=[f"{g}\n(n={len(d)})" for g, d in
                                                                        zip(order, data, strict=True)])
    ax.set(ylabel="absolute error (months)", title="Absolute error per age group")
    files["abs_error"] = "abs_error_by_age_group.png"
    save("abs_error")
    return files


def _table(report: dict) -> list[tuple[str, dict]]:
    rows = [("all", report["overall"])]
    rows += [(f"age {g}", m) for g, m in report["by_age_group"].items()]
    rows += [(s, m) for s, m in report["by_sex"].items()]
    return rows


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if pct else f"{value:.2f}"


def _inline_html(markdown: str) -> str:
    """A line of the Markdown report as HTML: escaped, its `code` spans as <code> (not raw backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown, quote=False))


def write_evaluation_page(out_dir: str, report: dict, plots: dict[str, str], model_version: str, data_uri: str,
                 model_meta: dict) -> None:
    """report.md (links the PNGs) and report.html (PNGs embedded, one file to share)."""
    out = Path(out_dir)
    header = ["group", "n", "MAE", "RMSE", "R^2", "within +-6 m", "within +-12 m"]
    lines = []
    for name, m in _table(report):
        if not m.get("n"):
            lines.append([name, "0", "-", "-", "-", "-", "-"])
            continue
        lines.append([name, str(m["n"]), _fmt(m["mae"]), _fmt(m["rmse"]), _fmt(m["r2"]), _fmt(m["within_6m"], True),
                      _fmt(m["within_12m"], True)])
    trained = model_meta.get("data", {})
    intro = (f"Model `{model_version}` on `{data_uri}`. Bone ages in months. "
             f"Trained on {trained.get('train_images', '?')} images. A tool to support, not replace, a "
             "radiologist's reading.")
    md = ["# Bone age evaluation", "", intro, "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in lines] + [""]
    md += [f"![{name}]({file})" for name, file in plots.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in lines)
    images = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode((out / file).read_bytes()).decode()}">'
        for name, file in plots.items())
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>Bone age evaluation</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:48%;margin:1%}</style>"
        f"<h1>Bone age evaluation</h1><p>{_inline_html(intro)}</p><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells}</table>{images}")


def run_evaluation(model_uri: str, data_uri: str, out_dir: str, device: str | None = None,
                   val_fraction: float | None = None, labels_uri: str | None = None) -> dict:
    """Metrics JSON, predictions CSV, plots and report in ``out_dir`` (a local folder). ``data_uri`` is a
    preprocessed cache, or, with ``labels_uri``, a folder of original films (see :func:`predict_films`)."""
    predictor = Predictor.load(model_uri, device=device)
    left_out: dict = {}
    if labels_uri:
        if val_fraction is not None:
            raise ValueError("--val-fraction selects rows of a cache; with --labels every labelled film is scored")
        frame, left_out = predict_films(predictor, data_uri, labels_uri)
    else:
        frame = predict_cache(predictor, data_uri, val_fraction)
    report = evaluate(frame["pred"], frame["true"], frame["male"])
    if "low" in frame and frame["low"].notna().all():  # a calibrated model: how its intervals did here
        inside = (frame["true"] >= frame["low"]) & (frame["true"] <= frame["high"])
        report["interval"] = {"level": predictor.calibration.level, "coverage": float(inside.mean()),
                              "mean_width_months": float((frame["high"] - frame["low"]).mean()), "n": len(frame)}
    if left_out:
        report["left_out"] = left_out
    # the baseline per group too: every child given the set's mean age (a group is only "learned" if it
    # beats this)
    mean_error = np.abs(frame["true"] - frame["true"].mean())
    groups = frame["true"].map(age_group)
    for name, figures in report["by_age_group"].items():
        if figures.get("n"):
            figures["mean_predictor_mae"] = float(mean_error[groups == name].mean())
    for name, figures in report["by_sex"].items():
        if figures.get("n"):
            figures["mean_predictor_mae"] = float(mean_error[(frame["male"] >= 0.5) == (name == "male")].mean())
    report.update({"model": model_uri, "model_version": predictor.version, "data": data_uri,
                   "val_fraction": val_fraction,
                   "mean_predictor_mae": float(mean_error.mean())})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "predictions.csv", index=False)
    plots = write_plots(frame, out)
    report["plots"] = plots
    storage.write_bytes(str(out / "metrics.json"), json.dumps(report, indent=2).encode())
    write_evaluation_page(out_dir, report, plots, predictor.version, data_uri, predictor.checkpoint.metadata)
    return report
