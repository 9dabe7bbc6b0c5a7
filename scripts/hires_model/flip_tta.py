"""Mirror images as a test-time variant: the model's predictions on a labelled cache, plain and averaged
with the horizontally flipped image, written as two ``predictions.csv`` for ``compare.py``.

    python scripts/hires_model/flip_tta.py MODEL CACHE OUT_FOLDER [--val-fraction 0.1]

The RSNA films are left hands and training never flips them (``AugmentConfig.flip`` is off), so a flipped
film is a right hand to the model: this measures whether the flip helps anyway.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.files.cache import labelled_images
from boneage.predict.predictor import Predictor
from boneage.train.data import in_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("cache")
    parser.add_argument("out")
    parser.add_argument("--val-fraction", type=float)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, tta=0)
    keep = None if args.val_fraction is None else (lambda i: in_validation(i, args.val_fraction))
    rows = labelled_images(args.cache, keep, predictor.preprocess_config.config_hash(), purpose="score")
    images = np.asarray(rows.images)
    plain = predictor.predict_arrays(images, rows.male)
    flipped = predictor.predict_arrays(np.ascontiguousarray(images[:, :, ::-1]), rows.male)
    if predictor.calibration is not None:  # the bone age a user gets
        plain, flipped = predictor.calibration.point(plain), predictor.calibration.point(flipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, pred in (("plain", plain), ("flip", flipped), ("plain+flip", (plain + flipped) / 2)):
        pd.DataFrame({"id": rows.ids, "true": rows.boneage, "pred": pred, "male": rows.male}).to_csv(
            out / f"{name}.csv", index=False)
    print(f"wrote {out}/plain.csv, flip.csv, plain+flip.csv ({len(plain)} films)")


if __name__ == "__main__":
    main()
