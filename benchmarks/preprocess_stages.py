"""Median milliseconds per image for decoding and for each preprocessing stage, on one core.

Run by hand:  .venv/bin/python benchmarks/preprocess_stages.py [--data ../shared/data/rsna] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import cv2
import torch

from boneage.files import storage
from boneage.files.images import decode_image
from boneage.prepare.stages import PreprocessConfig, preprocess

STAGES = ["film_check", "contrast", "segment", "fill", "dilate", "overlay", "crop", "clahe", "sharpen", "resize"]


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "rsna"))
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads (1 = one core)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images; the first warms up")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    paths = sorted(Path(args.data).rglob("*.png"))
    paths = [p for p in paths if p.parent.name != "masks"]
    if not paths:
        raise SystemExit(f"no PNG images under {args.data}")
    config = PreprocessConfig()
    rows: list[dict[str, float]] = []
    rejections: Counter[str] = Counter()
    for repeat in range(args.repeats):
        for path in paths:
            data = storage.read_bytes(str(path))
            start = time.perf_counter()
            image = decode_image(data, str(path)).pixels
            timings = {"decode": (time.perf_counter() - start) * 1000.0}
            result = preprocess(image, config, timings)
            timings["total"] = sum(timings.values())
            timings["mpx"] = image.size / 1e6
            if repeat == args.repeats - 1:
                rows.append(timings)
                rejections[result.quality_flags()["reasons"] or "ok"] += 1

    large = [r for r in rows if r["mpx"] >= 3.0]
    print(f"{len(rows)} images from {args.data}; machine: {platform.processor() or platform.machine()}, "
          f"{args.threads} OpenCV thread(s); median size {statistics.median(r['mpx'] for r in rows):.2f} Mpx; "
          f"{len(large)} images >= 3 Mpx")
    print(f"{'stage':<10} {'median ms (all)':>16} {'median ms (>=3 Mpx)':>20}")
    for stage in ["decode", *STAGES, "total"]:
        med_all = statistics.median(r.get(stage, 0.0) for r in rows)
        med_large = statistics.median(r.get(stage, 0.0) for r in large) if large else float("nan")
        print(f"{stage:<10} {med_all:>16.1f} {med_large:>20.1f}")
    print(f"max total: {max(r['total'] for r in rows):.1f} ms; outcomes: {dict(rejections)}")


if __name__ == "__main__":
    main()
