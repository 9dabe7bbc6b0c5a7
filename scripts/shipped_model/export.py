"""Write the shipped demonstration model in fp16, with the held-out run's validation figures in its
metadata (under "heldout_run") and, with ``--calibrated``, the interval calibration.

    .venv/bin/python scripts/shipped_model/export.py MODEL.pt OUT.pt --heldout HELDOUT.pt [--calibrated CAL.pt]

MODEL may be the held-out run's model itself (what ships now: see scripts/train_shipped_model.sh).
CAL is the held-out run's model after ``boneage calibrate`` on the images it never saw; when MODEL
is another network (a retrain on everything), the calibration is borrowed, and marked so.
"""

from __future__ import annotations

import argparse

from boneage.checkpoint import load_checkpoint, save_checkpoint

NOTE = ("Demonstration model: trained from random initialisation on labelled RSNA images shared with this "
        "project (142 of the 177 that pass the quality check; 35 held out), at 128 px on a CPU. Not for clinical "
        "use. Train on the full RSNA set for a real model (README: 'Train on the full RSNA set').")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model file to ship")
    parser.add_argument("out", help="where to write the shipped model")
    parser.add_argument("--heldout", required=True, help="model file of the held-out run")
    parser.add_argument("--calibrated", help="the held-out run's model after boneage calibrate")
    args = parser.parse_args()
    final, heldout = load_checkpoint(args.model), load_checkpoint(args.heldout)
    meta = dict(final.metadata)
    meta["note"] = NOTE
    meta["heldout_run"] = {"val": heldout.metadata["val"], "best_epoch": heldout.metadata["epoch"] + 1,
                           "data": heldout.metadata.get("data", {}), "history": heldout.metadata.get("history", [])}
    if args.calibrated:
        calibrated = load_checkpoint(args.calibrated)
        calibration = dict(calibrated.metadata["calibration"])
        if calibrated.metadata.get("calibrated_from") != final.version:
            calibration["borrowed_from"] = "the held-out run's model, calibrated on the images it never saw"
        meta["calibration"] = calibration
    version = save_checkpoint(args.out, final.model, final.preprocess, meta, half=True)
    print(f"wrote {args.out} ({version})")


if __name__ == "__main__":
    main()
