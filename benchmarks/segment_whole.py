"""The U-Net on the whole image in one pass (``PreprocessConfig.segment_patches=False``) against its
overlapping 128 px patches (the default, as it was trained), on the full-size RSNA films of ``../shared``
(rsna/val and rsna/train): the U-Net's time per film on one core, how far the masks agree (IoU), and the
shipped model's MAE with each. Writes ``benchmarks/results/<date>-segment_whole.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segment_whole.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from boneage.predict.predictor import Predictor
from boneage.prepare.segmentation import get_segmenter
from boneage.prepare.stages import resize_long_side

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    films = []
    for part in ("val", "train"):
        labels = pd.read_csv(args.data / "rsna" / f"{part}.csv")
        films += [(part, str(args.data / "rsna" / part / f"{r.id}.png"), float(r.boneage), "M" if r.male else "F")
                  for r in labels.itertuples()]
    shipped = Predictor.load()
    segmenter = get_segmenter("unet")
    rows, masks = [], {}
    for patches in (True, False):
        config = dataclasses.replace(shipped.checkpoint.preprocess, segment_patches=patches)
        predictor = Predictor(dataclasses.replace(shipped.checkpoint, preprocess=config))
        times, found = [], []
        for _, path, _, _ in films:
            small = resize_long_side(cv2.imread(path, cv2.IMREAD_GRAYSCALE), config.segment_size)
            segmenter(small, patches=patches)  # warm
            start = time.perf_counter()
            found.append(segmenter(small, patches=patches) > 0)
            times.append(time.perf_counter() - start)
        masks[patches] = found
        scored = [(part, truth, predictor.predict_files([path], sex=sex)[0].bone_age_months)
                  for part, path, truth, sex in films]
        row = {"U-Net": "overlapping patches (default)" if patches else "whole image, one pass",
               "U-Net ms per film, median": round(1000 * float(np.median(times)), 1)}
        for part, name in (("val", "rsna/val"), ("train", "rsna/train")):
            errors = [pred - truth for p, truth, pred in scored if p == part and pred is not None]
            row[f"MAE {name}"] = round(float(np.mean(np.abs(errors))), 2)
            row[f"bias {name}"] = round(float(np.mean(errors)), 2)
        rows.append(row)
    iou = [float((a & b).sum() / max(1, (a | b).sum())) for a, b in zip(masks[True], masks[False], strict=True)]
    result = {
        "title": "The U-Net on the whole image in one pass against overlapping patches (shipped hires model)",
        "script": "benchmarks/segment_whole.py",
        "machine": {"cpu": f"{os.cpu_count()}-core {platform.machine()}, one thread", "gpu": "none"},
        "unit": "milliseconds (U-Net alone, image at segment_size), months",
        "notes": (f"{len(films)} full-size films; masks of the two ways: median IoU {np.median(iou):.4f}, "
                  f"lowest {min(iou):.3f}, {sum(i < 0.95 for i in iou)} under 0.95. The shipped model's "
                  "calibration was fitted with the patches."),
        "rows": rows,
    }
    path = args.out_dir / f"{datetime.date.today().isoformat()}-segment_whole.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
