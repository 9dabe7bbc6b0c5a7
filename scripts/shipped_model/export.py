"""Write the shipped model: fp16 weights, the calibrated interval, and its held-out figures in its metadata.

    .venv/bin/python scripts/shipped_model/export.py CALIBRATED.pt OUT.pt --eval out/shipped-model/eval-lite0

CALIBRATED is the trained model after ``boneage calibrate`` on held-out full-size films; EVAL is the
folder of ``boneage evaluate`` outputs for the held-out sets (``a``, ``b``, ``c``: see
scripts/train_shipped_model.sh), whose overall figures go under ``metadata["heldout"]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from boneage.network.checkpoint import load_checkpoint, save_checkpoint

NOTE = ("Trained on the 12,611 RSNA training images at 100 x 100 px (rsna-100px; 10% held out by id hash, the 52 "
        "ids of rsna/train left out), on 2 CPU cores. Full-size films are squashed to that domain first "
        "(preprocessing preset rsna100). Not for clinical use; a model trained on full-size films on GPUs should do "
        "better (README: 'Train on the full RSNA set').")
SETS = {"a": "10% id-hash split of the 12,611 (100 px)", "a_half": "the same ids' rsna-half films (half size)",
        "b": "150 full-size rsna/val films", "c": "52 full-size rsna/train films"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="the calibrated model file to ship")
    parser.add_argument("out", help="where to write the shipped model")
    parser.add_argument("--eval", required=True, help="folder with a/, b/, c/ (and a_half/) of boneage evaluate")
    parser.add_argument("--note", default=NOTE, help="what the model was trained on, stored in its metadata")
    args = parser.parse_args()
    model = load_checkpoint(args.model)
    if "calibration" not in model.metadata:
        raise SystemExit(f"{args.model} is not calibrated: run boneage calibrate first")
    meta = dict(model.metadata)
    meta["note"] = args.note
    meta["heldout"] = {}
    for key, name in SETS.items():
        if not (Path(args.eval) / key / "metrics.json").exists() and key == "a_half":
            continue  # the 100 px model was measured without it
        report = json.loads((Path(args.eval) / key / "metrics.json").read_text())
        meta["heldout"][key] = {"set": name, "overall": report["overall"], "by_age_group": report["by_age_group"],
                                "by_sex": report["by_sex"], "mean_predictor_mae": report["mean_predictor_mae"],
                                "interval": report.get("interval")}
    meta.pop("history", None)
    version = save_checkpoint(args.out, model.model, model.preprocess, meta, half=True)
    print(f"wrote {args.out} ({version})")


if __name__ == "__main__":
    main()
