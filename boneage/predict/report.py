"""``boneage report``: one page a clinician can read (PDF or HTML), drawn with matplotlib.

It shows the radiograph, the model's input with its Grad-CAM heatmap, the bone age with its
interval, the comparison with chronological age, the maturity category, the quality flags, the
model version and a note that the estimate is for research use only and supports, and does not replace,
a radiologist's reading.
Everything on it comes from one :class:`~boneage.predict.result.Prediction` of the one prediction path; a
labelled field of the result schema is a line of its own.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io

import numpy as np

from boneage import __version__
from boneage.clinical import RESEARCH_USE_ONLY
from boneage.clinical.heatmap import CAPTION, colour_bar, display_size, overlay
from boneage.clinical.reference import sds_text
from boneage.files import storage
from boneage.predict.predictor import Predictor, prepare_radiograph
from boneage.predict.result import Prediction, Verdict, labelled_fields

DISCLAIMER = (f"{RESEARCH_USE_ONLY} This automated estimate supports, and does not replace, the reading of "
              "the radiograph by a radiologist. Check the image, the heatmap and the quality flags before use.")
CATEGORY_RULE = ("delayed or advanced only when the whole SDS range is below -2 or above +2, average when it lies "
                 "within; indeterminate when it crosses -2 or +2, or without an interval")
UNTRAINED_NOTE = "UNTRAINED MODEL: this bone age is meaningless (for trying the pipeline only)."


def _fmt(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def report_lines(row: Prediction, calibration: dict | None = None) -> list[tuple[str, str]]:
    """(label, text) pairs: the same content for the PDF and the HTML page."""
    lines = [("Image", row.id), ("Sex", {"M": "male", "F": "female"}.get(row.sex or "", "unknown"))]
    chrono = row.chronological_age_months
    lines.append(("Chronological age", "not given" if chrono is None else f"{chrono:.1f} months"))
    if row.error:
        lines.append(("Bone age", f"not scored: {row.error}"))
        return lines
    quality = row.quality or {}
    if row.bone_age_months is None:  # refused (boneage.prepare.verdict): Quality says why, once
        lines.append(("Bone age", "withheld: the film was refused (the reason is under Quality)"))
        lines.append(("Quality", _quality_text(quality)))
        lines.append(("Model", f"{row.model_version}" + ("" if row.model_trained else " (untrained)")))
        return lines
    lines.append(("Bone age", f"{row.bone_age_months:.1f} months ({row.bone_age_years_months})"))
    if row.bone_age_interval_low is not None:
        interval = (f"{row.interval_level:.0%} interval {row.bone_age_interval_low:.1f} to "
                    f"{row.bone_age_interval_high:.1f} months")
        if calibration and calibration.get("coverage", {}).get("coverage") is not None:
            interval += f" (measured coverage on held-out images: {calibration['coverage']['coverage']:.0%})"
    else:
        interval = "not available (the model has no interval calibration)"
    lines.append(("Uncertainty", interval))
    if quality.get("age_out_of_range"):
        lines.append(("Compared with age", "not compared: the chronological age is outside 0 to 19 years"))
    elif row.bone_age_minus_chronological_months is None:
        lines.append(("Compared with age", "chronological age not given"))
    else:
        sds = ("SDS n/a (age outside the reference table)" if row.sds is None
               else f"{sds_text(row.sds, row.sds_low, row.sds_high, row.maturity_category)} against {row.reference}")
        lines.append(("Compared with age", f"bone age minus chronological age "
                                           f"{_fmt(row.bone_age_minus_chronological_months, signed=True)} months; {sds}"))
    category = row.maturity_category or "n/a"
    lines.append(("Maturity category", f"{category} ({CATEGORY_RULE})"))
    lines += [(out.label, out.text(getattr(row, name))) for name, out in labelled_fields(type(row)).items()
              if getattr(row, name) is not None]
    lines.append(("Quality", _quality_text(quality)))
    lines.append(("Model", f"{row.model_version}" + ("" if row.model_trained else " (untrained)")))
    return lines


def _quality_text(quality) -> str:
    if quality.get("verdict") in (None, Verdict.OK):
        return "passed (film check, contrast and hand checks)"
    return f"{quality['verdict'].upper()}: {quality.get('detail')}"


def _png(rgb_or_grey: np.ndarray) -> bytes:
    import cv2

    image = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def render_pdf(row: Prediction, original: np.ndarray | None, model_input: np.ndarray | None,
               cam: np.ndarray | None, calibration: dict | None = None) -> bytes:
    """One A4 page as PDF bytes."""
    import matplotlib.pyplot as plt

    fig = _page(row, original, model_input, cam, calibration)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    plt.close(fig)
    return buf.getvalue()


def render_rgb(row: Prediction, original: np.ndarray | None, model_input: np.ndarray | None,
               cam: np.ndarray | None, calibration: dict | None = None, dpi: int = 100) -> np.ndarray:
    """The same page as an H x W x 3 uint8 image (the pixels of a DICOM Secondary Capture)."""
    import matplotlib.pyplot as plt

    fig = _page(row, original, model_input, cam, calibration)
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    plt.close(fig)
    return rgb


def _page(row: Prediction, original: np.ndarray | None, model_input: np.ndarray | None,
          cam: np.ndarray | None, calibration: dict | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.5, 0.975, "Bone age assessment", ha="center", fontsize=18, weight="bold")
    fig.text(0.5, 0.957, "automated estimate from a left-hand radiograph (boneage)", ha="center", fontsize=10,
             color="#444")
    fig.text(0.5, 0.941, RESEARCH_USE_ONLY, ha="center", fontsize=10, color="#b00020", weight="bold")
    for i, (title, image, cmap) in enumerate(_panels(row, original, model_input, cam)):
        # The title at a fixed height under the header, whatever the image's shape (or its absence).
        fig.text(0.04 + i * 0.32 + 0.14, 0.918, title, ha="center", fontsize=10)
        ax = fig.add_axes([0.04 + i * 0.32, 0.60, 0.28 if cmap or image is None else 0.25, 0.30])
        ax.set_axis_off()
        if image is None:
            reason = "none: the film was not scored" if row.bone_age_months is None else "not available"
            ax.text(0.5, 0.5, reason, ha="center", va="center", fontsize=9, color="#777", transform=ax.transAxes)
        elif cmap:
            ax.imshow(image, cmap=cmap, vmin=0, vmax=255)
        else:
            ax.imshow(image)
            colour_bar(fig, ax)
    for k, part in enumerate(_wrap(CAPTION, 120) if cam is not None else []):
        fig.text(0.06, 0.582 - k * 0.013, part, fontsize=8, color="#444")
    y = 0.53
    if row.model_trained is False:
        fig.text(0.06, y, UNTRAINED_NOTE, fontsize=10, color="#b00020", weight="bold")
        y -= 0.03
    for label, text in report_lines(row, calibration):
        big = label in ("Bone age", "Maturity category")
        fig.text(0.06, y, label, fontsize=11 if big else 10, weight="bold")
        wrapped = _wrap(text, 62 if big else 70)
        for k, part in enumerate(wrapped):
            fig.text(0.31, y - k * 0.018, part, fontsize=11 if big else 10)
        y -= 0.018 * len(wrapped) + 0.014
    box = fig.add_axes([0.05, 0.06, 0.90, 0.08])
    box.set_xticks([])
    box.set_yticks([])
    for spine in box.spines.values():
        spine.set_color("#b00020")
    for k, part in enumerate(_wrap(DISCLAIMER, 95)):
        box.text(0.02, 0.68 - k * 0.3, part, fontsize=10, color="#b00020", transform=box.transAxes, va="center")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    fig.text(0.06, 0.03, f"boneage {__version__}, model {row.model_version}, generated {stamp}", fontsize=8,
             color="#666")
    return fig


def _panels(row: Prediction, original: np.ndarray | None, model_input: np.ndarray | None, cam: np.ndarray | None):
    """(title, image, grey colour map or None for RGB) of the page's three pictures: the model's input and its
    heatmap at the hand's proportions on the film (the network sees the hand's box squared)."""
    import cv2

    shown = None if model_input is None else cv2.resize(model_input, display_size(model_input.shape, row.hand_aspect),
                                                        interpolation=cv2.INTER_CUBIC)
    heat = None if cam is None or model_input is None else overlay(model_input, cam, aspect=row.hand_aspect)
    return [("Radiograph", original, "gray"), ("Model input", shown, "gray"), ("Heatmap (Grad-CAM)", heat, None)]


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def render_html(row: Prediction, original: np.ndarray | None, model_input: np.ndarray | None,
                cam: np.ndarray | None, calibration: dict | None = None) -> str:
    """The same page as one self-contained HTML file (images embedded)."""

    def img(title: str, image: np.ndarray | None) -> str:
        if image is None:
            return f"<figure><figcaption>{title}</figcaption><p>not available</p></figure>"
        data = base64.b64encode(_png(image)).decode()
        return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>")

    (_, film, _), (_, shown, _), (_, heat, _) = _panels(row, original, model_input, cam)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in report_lines(row, calibration))
    warning = f'<p class="warn">{html.escape(UNTRAINED_NOTE)}</p>' if row.model_trained is False else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bone age assessment: {html.escape(row.id)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;color:#222}}
.imgs{{display:flex;gap:1rem}} figure{{margin:0;flex:1}} img{{width:100%;max-height:22rem;object-fit:contain;background:#000}}
th{{text-align:left;padding:.2rem 1rem .2rem 0;vertical-align:top}} .warn,.note{{color:#b00020}}
.note{{border:1px solid #b00020;padding:.6rem;margin-top:1.5rem}} .caption{{font-size:.85rem;color:#444}}</style></head><body>
<h1>Bone age assessment</h1><p>automated estimate from a left-hand radiograph (boneage)</p>
<p class="warn" id="research-use"><strong>{html.escape(RESEARCH_USE_ONLY)}</strong></p>{warning}
<div class="imgs">{img("Radiograph", film)}{img("Model input", shown)}{img("Heatmap (Grad-CAM)", heat)}</div>
{f'<p class="caption">{html.escape(CAPTION)}</p>' if heat is not None else ""}
<table>{rows}</table>
<p class="note">{html.escape(DISCLAIMER)}</p>
<p><small>boneage {__version__}, model {html.escape(str(row.model_version))}</small></p>
</body></html>
"""


def write_report(predictor: Predictor, image_uri: str, out: str, sex: str | None = None,
                 chronological_age_months: float | None = None) -> Prediction:
    """Score one film through the one prediction path and write its report (``.pdf`` or ``.html``)."""
    from boneage.files.images import read_image

    if not out.lower().endswith((".pdf", ".html", ".htm")):
        raise ValueError(f"--out must end in .pdf or .html, got {out!r}")
    rad = read_image(image_uri, min_side=predictor.preprocess_config.decode_min_side)
    row, *page = page_contents(predictor, rad, sex, chronological_age_months)
    render = render_pdf if out.lower().endswith(".pdf") else render_html
    rendered = render(row, *page)
    storage.write_bytes(out, rendered if isinstance(rendered, bytes) else rendered.encode())
    return row


def page_contents(predictor: Predictor, rad, sex: str | None = None, chronological_age_months: float | None = None):
    """Score one decoded film through the one prediction path: (row, the film, the model input, the
    heatmap, the calibration), what every rendering of the page takes."""
    film = prepare_radiograph(rad, predictor.preprocess_config, sex, chronological_age_months)
    row = predictor.predict_prepared([film], keep_preprocessed=True)[0]
    model_input = row.preprocessed
    cam = (predictor.heatmap(model_input, row.sex)
           if model_input is not None and row.bone_age_months is not None else None)
    row = row.model_copy(update={"preprocessed": None})
    return row, _as_uint8(rad.pixels), model_input, cam, predictor.checkpoint.metadata.get("calibration")


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    return np.clip((pixels.astype(np.float32) - lo) * 255.0 / max(hi - lo, 1e-6), 0, 255).astype(np.uint8)
