"""Classical against U-Net hand segmentation on the real images: accuracy, agreement and time.

    .venv/bin/python benchmarks/segmenter_compare.py [--data ../shared/data] [--out out/segmenter-compare]

Prints Dice against the one hand-drawn mask (1377), the Dice between the two segmenters on every
shared image, and the median milliseconds per image of each (CPU, and GPU when there is one).
Writes OUT/disagreements.png: the 10 images where they disagree most, classical outline in red,
U-Net outline in green, for a person to judge which is right.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from boneage.files import storage
from boneage.files.images import read_image
from boneage.prepare.segmentation import classical_segmenter
from boneage.prepare.segmentation.unet import UNetSegmenter
from boneage.prepare.stages import PreprocessConfig, fill_contours, hand_mask, resize_long_side
from boneage.train.segmenter import dice


def _outlines(image: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 3)
    return out


def _timed(fn, image: np.ndarray, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn(image)
    return (time.perf_counter() - start) * 1000 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="out/segmenter-compare")
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (1 = one Ray actor)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    data = Path(args.data)
    unet_cpu = UNetSegmenter.load(device="cpu")
    config = PreprocessConfig()

    image = read_image(str(data / "rsna/train/1377.png")).pixels
    reference = read_image(str(data / "rsna/masks/1377.png")).pixels
    real_mask = {}
    for name in ("classical", "unet"):
        for kernel in (1, config.dilation_kernel):
            found = hand_mask(image, PreprocessConfig(segmenter=name, dilation_kernel=kernel)).mask
            real_mask[f"{name}, dilation {kernel}"] = round(dice(found, reference), 4)

    uris = storage.list_inputs([str(data / "rsna/train"), str(data / "rsna/val"), str(data / "examples")])
    rows, times = [], {"classical": [], "unet": []}
    for uri in uris:
        small = resize_long_side(read_image(uri).pixels, config.segment_size)
        times["classical"].append(_timed(classical_segmenter, small))
        times["unet"].append(_timed(unet_cpu, small))
        a, b = fill_contours(classical_segmenter(small)), fill_contours(unet_cpu(small))
        rows.append((dice(a, b), storage.file_id(uri), small, a, b))
    agreement = np.array([r[0] for r in rows])
    summary = {
        "dice_vs_real_mask_1377_full_resolution": real_mask,
        "images": len(rows),
        "agreement_dice": {"median": round(float(np.median(agreement)), 4), "mean": round(float(agreement.mean()), 4),
                           "p05": round(float(np.percentile(agreement, 5)), 4),
                           "below_0.95": int((agreement < 0.95).sum()), "below_0.90": int((agreement < 0.90).sum())},
        "worst_10": [(fid, round(d, 4)) for d, fid, *_ in sorted(rows, key=lambda r: r[0])[:10]],
        "ms_per_image_cpu": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "cpu_threads": args.threads,
        "segment_size": config.segment_size,
    }
    if torch.cuda.is_available():
        unet_gpu = UNetSegmenter.load(device="cuda")
        smalls = [r[2] for r in rows]
        for s in smalls[:5]:
            unet_gpu(s)
        torch.cuda.synchronize()
        summary["ms_per_image_gpu_unet"] = round(statistics.median(_timed(unet_gpu, s) for s in smalls), 1)
        summary["gpu"] = torch.cuda.get_device_name()

    worst = sorted(rows, key=lambda r: r[0])[:10]
    colour = [np.hstack([_outlines(small, [(a, (0, 0, 255))]), _outlines(small, [(b, (0, 255, 0))])])
              for _, _, small, a, b in worst]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = [cv2.resize(c, (512, round(512 * c.shape[0] / c.shape[1]))) for c in colour]
    height = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    for (d, fid, *_), t in zip(worst, tiles, strict=True):
        cv2.putText(t, f"{fid} dice {d:.3f}  red: classical  green: U-Net", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 255, 255), 1, cv2.LINE_AA)
    grid = np.vstack([np.hstack(tiles[i : i + 2]) for i in range(0, len(tiles), 2)])
    cv2.imwrite(str(out / "disagreements.png"), grid)
    summary["montage"] = str(out / "disagreements.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
