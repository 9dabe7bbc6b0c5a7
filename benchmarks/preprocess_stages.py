"""Milliseconds per full-size film, from file to bone age, on one core: decoding, each stage, the model.

Run by hand:  make bench   (or .venv/bin/python benchmarks/preprocess_stages.py [--data ../shared/data/rsna]
              [--model URI] [--threads 1] [--preset seed])

For each PNG film: read, decode, the preprocessing stages of the model's own config, then the network
(batched as bulk scoring runs it, ``--batch`` films per call; its share per film, and the one-film
call the endpoint makes at concurrency 1). The same film re-encoded as JPEG (quality 95) is decoded in
full and reduced (libjpeg's DCT scaling, what ``reduced_decode`` does for a 100 px model). The ratio of the
whole path to the PNG decode is the figure issues 18 and 27 set (at most 2.5 for rsna100, 6 for hires).
Where ``val.csv`` labels the films, the MAE of the PNG path and of the reduced-JPEG path are printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from boneage.files import storage
from boneage.files.images import decode_image
from boneage.predict.predictor import Predictor
from boneage.prepare.stages import STEPS, PreprocessConfig, Step, preprocess

STAGES = [step.name for step in STEPS]


def timed(steps: list[Step], timings: dict[str, float]) -> list[Step]:
    """The steps, each adding its milliseconds to ``timings[name]`` (the pipeline itself has no timers)."""
    def wrap(step: Step) -> Step:
        def run(film) -> None:
            start = time.perf_counter()
            step.run(film)
            timings[step.name] = timings.get(step.name, 0.0) + (time.perf_counter() - start) * 1000.0

        return dataclasses.replace(step, run=run)

    return [wrap(step) for step in steps]


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "rsna"))
    parser.add_argument("--model", help="checkpoint (default: the shipped model)")
    parser.add_argument("--preset", help="time this preprocessing preset instead of the model's (e.g. seed)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads (1 = one core)")
    parser.add_argument("--batch", type=int, default=16, help="films per network call, as bulk scoring")
    parser.add_argument("--limit", type=int, help="only this many films")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    paths = sorted(p for p in Path(args.data).rglob("*.png") if p.parent.name != "masks")[: args.limit]
    if not paths:
        raise SystemExit(f"no PNG images under {args.data}")
    predictor = Predictor.load(args.model, device="cpu", tta=0)
    config = PreprocessConfig.named(args.preset) if args.preset else predictor.preprocess_config
    reduced_side = dataclasses.replace(config, reduced_decode=True).decode_min_side if config.domain_size else None
    labels = {}
    for csv in [*Path(args.data).glob("*.csv"), *Path(args.data).parent.glob("*.csv")]:
        frame = pd.read_csv(csv, dtype={"id": str})
        labels.update(zip(frame["id"], zip(frame["boneage"], frame["male"], strict=True), strict=True))

    rows: list[dict[str, float]] = []
    inputs, jpeg_inputs, reduced_inputs, sexes, truths = [], [], [], [], []
    for repeat in range(2):  # the first pass warms up caches and the networks
        for path in paths:
            data = storage.read_bytes(str(path))
            start = time.perf_counter()
            pixels = decode_image(data, str(path)).pixels
            timings = {"decode_png": (time.perf_counter() - start) * 1000.0}
            result = preprocess(pixels, config, timed(STEPS, timings))
            jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            start = time.perf_counter()
            full_jpeg = decode_image(jpeg, "film.jpg").pixels
            timings["decode_jpeg"] = (time.perf_counter() - start) * 1000.0
            start = time.perf_counter()
            reduced = decode_image(jpeg, "film.jpg", min_side=reduced_side).pixels
            timings["decode_jpeg_reduced"] = (time.perf_counter() - start) * 1000.0
            timings["mpx"] = pixels.size / 1e6
            if repeat:
                rows.append(timings)
                inputs.append(result.image)
                jpeg_inputs.append(preprocess(full_jpeg, config).image)
                reduced_inputs.append(preprocess(reduced, config).image)
                label = labels.get(path.stem)
                sexes.append(float(label[1]) if label else 1.0)
                truths.append(float(label[0]) if label else np.nan)

    images, male = np.stack(inputs), np.array(sexes, np.float32)
    predictor.batch_size = args.batch
    predictor.predict_arrays(images[: args.batch], male[: args.batch])  # warm-up
    start = time.perf_counter()
    months = predictor.predict_arrays(images, male)
    batched_ms = (time.perf_counter() - start) * 1000.0 / len(images)
    single = []
    for i in range(min(len(images), 50)):
        start = time.perf_counter()
        predictor.predict_arrays(images[i : i + 1], male[i : i + 1])
        single.append((time.perf_counter() - start) * 1000.0)
    jpeg_months = predictor.predict_arrays(np.stack(jpeg_inputs), male)
    reduced_months = predictor.predict_arrays(np.stack(reduced_inputs), male)
    for row in rows:
        row["prepare"] = sum(row.get(stage, 0.0) for stage in STAGES)
        row["total"] = row["decode_png"] + row["prepare"] + batched_ms
        row["ratio"] = row["total"] / row["decode_png"]

    print(f"{len(rows)} films from {args.data}; {platform.processor() or platform.machine()}, {args.threads} "
          f"thread(s); median {median(rows, 'mpx'):.2f} Mpx; model {predictor.version}; preprocessing "
          f"{'preset ' + args.preset if args.preset else 'of the model'} ({config.config_hash()})")
    print(f"{'step':<22} {'median ms':>10}")
    for key in ["decode_png", *[s for s in STAGES if any(s in r for r in rows)]]:
        print(f"{key:<22} {median(rows, key):>10.2f}")
    print(f"{'model (batch ' + str(args.batch) + ')':<22} {batched_ms:>10.2f}   per film")
    print(f"{'model (one film)':<22} {statistics.median(single):>10.2f}   the endpoint at concurrency 1")
    print(f"{'total, file to bone age':<22} {median(rows, 'total'):>10.2f}")
    print(f"{'ratio total / PNG decode':<24} {median(rows, 'ratio'):>8.2f}   (median over films; targets: rsna100 <= 2.5, hires <= 6)")
    print(f"{'decode_jpeg (full)':<22} {median(rows, 'decode_jpeg'):>10.2f}")
    print(f"{'decode_jpeg (reduced)':<22} {median(rows, 'decode_jpeg_reduced'):>10.2f}   min side "
          f"{reduced_side} (reduced_decode; off by default)")
    for name, other, base in (("full JPEG against PNG", jpeg_months, months),
                              ("reduced JPEG against full JPEG", reduced_months, jpeg_months)):
        difference = np.abs(other - base)
        print(f"{name}: bone age differs by median {np.median(difference):.2f}, max {difference.max():.2f} months")
    truth = np.array(truths)
    known = ~np.isnan(truth)
    if known.any():
        mae = {name: np.abs(values - truth)[known].mean()
               for name, values in (("PNG", months), ("JPEG", jpeg_months), ("reduced JPEG", reduced_months))}
        print(f"MAE on the {known.sum()} labelled films (TTA off, refused films scored too): "
              + ", ".join(f"{name} {value:.2f}" for name, value in mae.items()))


if __name__ == "__main__":
    main()
