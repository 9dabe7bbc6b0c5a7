"""Which preprocessing stages the shipped model should use, measured: the same short training run
under each preprocessing variant, scored on the three held-out sets of issue 15.

    .venv/bin/python scripts/shipped_model/ablation.py --data ../shared/data --out out/ablation

Every variant starts from the rsna-100px domain (full-size films are squashed to it by
``PreprocessConfig.domain_size``) and differs only in the stages after it. Training: a pretrained
EfficientNet-Lite0, ``--train-images`` images drawn from the training part of the 12,611 (id hash,
the 52 ``rsna/train`` ids left out), ``--epochs`` epochs, the package's own ``train_epoch`` and
``predict_batches``. Held out: (a) the 10 % id-hash split of the 12,611, (b) the 150 full-size
``rsna/val`` films, (c) the 52 full-size ``rsna/train`` films. A plain loop, not Ray: it compares
recipes cheaply; the shipped model itself comes from ``boneage train`` (scripts/train_shipped_model.sh).
Prints and appends one JSON line per variant to OUT/ablation.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from boneage.files.images import read_image
from boneage.network.model import ModelConfig, build_model
from boneage.prepare.stages import PRESETS, preprocess, to_domain
from boneage.train.augment import AugmentConfig, build_augmentation
from boneage.train.data import in_validation
from boneage.train.loop import EpochOptions, predict_batches, train_epoch
from boneage.train.meters import after_each
from boneage.train.metrics import evaluate
from boneage.train.weighting import draw_repeats, expected_repeats

BASE = PRESETS["rsna100"]  # "crop": what the measurements below chose
VARIANTS = {
    "squash": dict(segment=False),
    "squash+clahe+sharpen": dict(segment=False, clahe=True, sharpen=True),
    "crop": dict(),
    "crop+clahe": dict(clahe=True),
    "crop+clahe+sharpen": dict(clahe=True, sharpen=True),
    "crop(pad)": dict(fit="pad"),
    "crop(pad)+clahe+sharpen": dict(fit="pad", clahe=True, sharpen=True),
}


def load_sets(data: Path, train_images: int, seed: int) -> dict[str, pd.DataFrame]:
    """id, boneage, male and a 100 px image per row, for the training subset and the held-out sets."""
    labels = pd.read_csv(data / "rsna-100px/boneage-training-dataset.csv", dtype={"id": str})
    full_train = pd.read_csv(data / "rsna/train.csv", dtype={"id": str})
    held = labels["id"].map(lambda i: in_validation(i, 0.1))
    pool = labels[~held & ~labels["id"].isin(full_train["id"])]
    sets = {"train": pool.sample(n=min(train_images, len(pool)), random_state=seed), "a_100px_split": labels[held]}
    for name, folder in (("train", sets["train"]), ("a_100px_split", sets["a_100px_split"])):
        sets[name] = folder.assign(image=[cv2.imread(str(data / f"rsna-100px/images/{i}.png"), cv2.IMREAD_GRAYSCALE)
                                          for i in folder["id"]])
    for name, split in (("b_rsna_val", "val"), ("c_rsna_train", "train")):
        frame = pd.read_csv(data / f"rsna/{split}.csv", dtype={"id": str})
        sets[name] = frame.assign(image=[to_domain(read_image(str(data / f"rsna/{split}/{i}.png")).pixels, 100)
                                         for i in frame["id"]])
    return sets


def prepared(frame: pd.DataFrame, config) -> dict[str, torch.Tensor]:
    images = np.stack([preprocess(image, config).image for image in frame["image"]])
    return {"image": torch.from_numpy(images), "male": torch.tensor(frame["male"].astype(bool).to_numpy(), dtype=torch.float32),
            "boneage": torch.tensor(frame["boneage"].to_numpy(), dtype=torch.float32)}


def batches(data: dict[str, torch.Tensor], index: np.ndarray, size: int):
    for start in range(0, len(index), size):
        part = torch.from_numpy(index[start:start + size])
        yield {k: v[part] for k, v in data.items()}


def run_variant(name: str, sets: dict[str, pd.DataFrame], args: argparse.Namespace) -> dict:
    config = dataclasses.replace(BASE, **VARIANTS[name])
    started = time.perf_counter()
    data = {k: prepared(v, config) for k, v in sets.items()}
    prep_seconds = time.perf_counter() - started
    torch.manual_seed(args.seed)
    ages = data["train"]["boneage"].numpy()
    model = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="imagenet", hidden_units=512,
                                    dropout=0.2, output_offset=float(ages.mean()), output_scale=float(ages.std())))
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    expected = expected_repeats(ages, None, 12, 0.5)
    steps = args.epochs * int(np.ceil(expected.sum() / args.batch_size))
    if args.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps + 10,
                                                        pct_start=0.15)
    else:  # the seed's plateau schedule never lowers the rate within so short a run: a constant rate
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    augment = build_augmentation(AugmentConfig(rotation_degrees=10, translate=0.05, zoom=0.1, contrast=0.1,
                                               brightness=0.1))
    device = torch.device("cpu")
    for _ in range(args.epochs):
        index = rng.permutation(np.repeat(np.arange(len(ages)), draw_repeats(expected, rng)))
        loss = train_epoch(model, after_each(batches(data["train"], index, args.batch_size), scheduler.step), optimizer,
                           device, EpochOptions(augment)).loss
    result = {"variant": name, "schedule": args.schedule, "config": dataclasses.asdict(config), "train_l1": round(loss, 2),
              "prep_seconds": round(prep_seconds, 1), "seconds": round(time.perf_counter() - started, 1)}
    for held in ("a_100px_split", "b_rsna_val", "c_rsna_train"):
        p = predict_batches(model, batches(data[held], np.arange(len(data[held]["boneage"])), 64), device)
        report = evaluate(p["pred"], p["true"], p["male"])
        result[held] = {"n": report["overall"]["n"], "mae": round(report["overall"]["mae"], 2),
                        "mean_predictor_mae": round(float(np.abs(p["true"] - ages.mean()).mean()), 2)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="out/ablation")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", choices=("onecycle", "constant"), default="onecycle")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = load_sets(Path(args.data), args.train_images, args.seed)
    for name in args.variants:
        result = run_variant(name, sets, args)
        print(json.dumps(result), flush=True)
        with open(out / "ablation.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
