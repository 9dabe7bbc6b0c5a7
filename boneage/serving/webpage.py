"""The upload page served at ``/``: one radiograph, the sex, the verdict, the answer with its clinical outputs
and heatmap.

Plain HTML and a few lines of JavaScript that call ``POST v1/predict``, so the page exercises exactly
the API other clients use. Behind an API key the browser asks once (HTTP Basic, any user name, the
key as password) and sends it with the page's own requests.
"""

import base64
import hashlib
import html
import json
import re

from boneage.clinical import HEATMAP_CAPTION, RESEARCH_USE_ONLY
from boneage.predict.result import Prediction, Verdict, labelled_fields

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>boneage: bone age from a hand radiograph</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 form { display: grid; grid-template-columns: max-content 1fr; gap: .6rem 1rem; align-items: center; }
 button { grid-column: 2; justify-self: start; padding: .4rem 1.2rem; }
 #result { margin-top: 1.5rem; padding: 1rem; border: 1px solid #ccc; border-radius: 6px; }
 #bone-age { font-size: 2rem; font-weight: bold; }
 #error { color: #b00020; }
 #warning, #verdict.warning { color: #8a5a00; }
 #verdict.refused { color: #b00020; font-weight: bold; }
 #heatmap { margin-top: 1rem; min-height: 4rem; border: 1px dashed #bbb; padding: .5rem; color: #777; }
 #heatmap img { max-width: 100%; display: block; }
 #heatmap-caption { font-size: .85rem; color: #444; margin: .4rem 0 0; }
 #note { margin-top: 1rem; font-size: .9rem; color: #b00020; }
 #research-use { padding: .4rem .8rem; border: 1px solid #b00020; color: #b00020; font-weight: bold; }
</style>
</head>
<body>
<h1>Bone age</h1>
<p id="research-use">__RESEARCH_USE_ONLY__</p>
<p>Upload a left-hand radiograph (PNG, JPEG or DICOM). Nothing is stored.</p>
<form id="form">
 <label for="acknowledge">Before use</label><span><input id="acknowledge" type="checkbox" required> I understand that this
 estimate is for research use only, not for clinical decisions, and does not replace a radiologist's reading</span>
 <label for="file">Radiograph</label><input id="file" name="file" type="file" accept=".png,.jpg,.jpeg,.dcm,image/*" required>
 <label for="sex">Sex</label>
 <select id="sex" name="sex"><option value="">choose...</option><option value="F">female</option>
 <option value="M">male</option></select>
 <label for="age">Chronological age (months, optional)</label><input id="age" name="chronological_age_months" type="number" step="0.1">
 <label for="want-heatmap">Heatmap</label><span><input id="want-heatmap" name="heatmap" type="checkbox" checked> show which regions drove the estimate</span>
 <label for="score-anyway">Refused films</label><span><input id="score-anyway" name="score_anyway" type="checkbox"> give a bone age even when the film is refused (not a hand)</span>
 <button id="submit" type="submit">Estimate</button>
</form>
<section id="result" hidden>
 <div id="verdict"></div>
 <div>Bone age: <span id="bone-age"></span> <span id="bone-age-ym"></span></div>
 <div id="interval"></div>
 <div id="comparison"></div>
 <div id="category"></div>
 <div id="more"></div>
 <div id="quality"></div>
 <div>Model: <span id="model-version"></span></div>
 <div id="warning"></div>
 <div id="heatmap" data-slot="heatmap">Heatmap: not requested.</div>
 <p id="heatmap-caption" hidden>__HEATMAP_CAPTION__</p>
 <div id="note">__RESEARCH_USE_ONLY__ This estimate supports, and does not replace, a radiologist's reading.</div>
</section>
<p id="error" role="alert"></p>
<p id="status" aria-live="polite"></p>
<script>
const form = document.getElementById("form");
// [name, label, digits, unit] of each labelled field of the result schema (boneage.predict.result.Output)
const LABELLED = __LABELLED__;
const show = (id, text) => { document.getElementById(id).textContent = text; };
const signed = (v) => `${v >= 0 ? "+" : ""}${v.toFixed(1)}`;
const fixed = (v, digits) => (v == null ? "n/a" : v.toFixed(digits));
const percent = (v) => (v == null ? "n/a" : `${Math.round(v * 100)}%`);
// the wording of boneage.clinical.reference.sds_text: "SDS -0.6 (-2.9 to +1.7), indeterminate"
const sdsText = (d) => `SDS ${signed(d.sds)} (${d.sds_low == null ? "no interval"
  : `${signed(d.sds_low)} to ${signed(d.sds_high)}`}), ${d.maturity_category}`;
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  show("error", ""); show("status", "estimating...");
  document.getElementById("result").hidden = true;
  const body = new FormData();
  const file = document.getElementById("file").files[0];
  if (file) body.append("file", file);
  body.append("sex", document.getElementById("sex").value);
  const age = document.getElementById("age").value;
  if (age) body.append("chronological_age_months", age);
  const wantHeatmap = document.getElementById("want-heatmap").checked;
  if (wantHeatmap) body.append("heatmap", "true");
  if (document.getElementById("score-anyway").checked) body.append("score_anyway", "true");
  try {
    const response = await fetch("v1/predict", { method: "POST", body, credentials: "same-origin" });
    const data = await response.json();
    show("status", "");
    if (!response.ok) { show("error", `${response.status}: ${data.error || "request failed"}`); return; }
    const q = data.quality || {};
    const verdict = document.getElementById("verdict");
    verdict.className = q.verdict || "ok";
    show("verdict", q.verdict === "__REFUSED__" ? `Refused: ${q.detail}`
      : q.verdict === "__WARNING__" ? `Warning: ${q.detail}` : "Film check: a left-hand radiograph");
    const months = data.bone_age_months;
    show("bone-age", months == null ? "withheld" : `${months.toFixed(1)} months`);
    show("bone-age-ym", months == null ? "" : `(${data.bone_age_years_months})`);
    show("interval", months == null ? "Interval: none (the film was refused, so it was not scored)"
      : data.bone_age_interval_low == null ? "Interval: not available (the model is not calibrated)"
      : `${Math.round(data.interval_level * 100)}% interval: ${data.bone_age_interval_low.toFixed(1)} to ${data.bone_age_interval_high.toFixed(1)} months`);
    const diff = data.bone_age_minus_chronological_months;
    show("comparison", months == null ? ""
      : q.age_out_of_range ? "Compared with chronological age: age outside the reference (0-19 years)"
      : diff == null ? "Compared with chronological age: age not given"
      : `Bone age minus chronological age: ${diff >= 0 ? "+" : ""}${diff.toFixed(1)} months`
        + (data.sds == null ? " (SDS: age outside the reference)" : `; ${sdsText(data)} (${data.reference})`));
    show("category", data.maturity_category ? `Maturity: ${data.maturity_category}`
      + (data.maturity_category === "indeterminate" ? (data.sds_low == null ? " (no interval: the model is not calibrated)"
        : " (the SDS range crosses -2 or +2)") : " (the whole SDS range)") : "");
    const more = document.getElementById("more");
    more.textContent = "";
    for (const [name, label, digits, unit] of LABELLED) {
      const v = data[name];
      if (v == null) continue;
      const line = document.createElement("div");
      line.textContent = `${label}: ${typeof v === "number" && digits != null ? v.toFixed(digits) : v}${unit}`;
      more.appendChild(line);
    }
    const slot = document.getElementById("heatmap");
    slot.textContent = "";
    document.getElementById("heatmap-caption").hidden = !data.heatmap_png_base64;
    if (data.heatmap_png_base64) {
      const img = document.createElement("img");
      img.id = "heatmap-image";
      img.alt = "Grad-CAM heatmap over the model's input";
      img.src = "data:image/png;base64," + data.heatmap_png_base64;
      slot.appendChild(img);
    } else {
      slot.textContent = !wantHeatmap ? "Heatmap: not requested."
        : months == null ? "Heatmap: none (the film was not scored)." : "Heatmap: not available.";
    }
    show("quality", `Quality: ${q.reasons || "passed"} (contrast ${fixed(q.contrast, 2)}, hand probability ${percent(q.p_hand)})`);
    show("model-version", data.model_version + (data.model_trained ? "" : " (untrained)"));
    show("warning", data.warning || "");
    document.getElementById("result").hidden = false;
  } catch (err) {
    show("status", ""); show("error", `request failed: ${err}`);
  }
});
</script>
</body>
</html>
"""


def page_html(result: type[Prediction] = Prediction) -> str:
    """The page for a result type: it shows each labelled field of the schema as "label: value"."""
    labelled = [[name, out.label, out.digits, out.unit] for name, out in labelled_fields(result).items()]
    return (_PAGE.replace("__RESEARCH_USE_ONLY__", RESEARCH_USE_ONLY)
            .replace("__HEATMAP_CAPTION__", html.escape(HEATMAP_CAPTION))
            .replace("__LABELLED__", json.dumps(labelled).replace("<", "\\u003c"))
            .replace("__REFUSED__", Verdict.REFUSED).replace("__WARNING__", Verdict.WARNING))


INDEX_HTML = page_html()


def _hashes(tag: str) -> str:
    """The CSP source for each inline ``<tag>`` block of the page: its SHA-256, so exactly it may run."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", INDEX_HTML, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


# The page's Content-Security-Policy: its own inline script and style (by hash: an injected one would not
# run), the heatmap as a data: image, requests to its own origin only, and never inside another site's frame.
PAGE_CSP = (f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; img-src data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
