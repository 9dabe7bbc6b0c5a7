"""Quick recipe search for the shipped model: a plain single-process loop over the package's own
training functions, on the whole cache held in memory, measured on the id-hash held-out split.

Why it exists: on a 2-core CPU a Ray Train run of the shipped model takes about 20 minutes, too slow
to compare recipes; this loop runs two at once (one torch thread each) with the same epoch, BatchNorm
re-estimation and validation code as ``boneage train``. Its figures are for choosing a recipe only;
the shipped model itself comes from ``boneage train`` (``scripts/train_shipped_model.sh``).

    .venv/bin/python scripts/shipped_model/recipe_search.py --cache out/shipped-model/cache-all-128 \
        --size 64 --epochs 40 --dropout 0 --power 0 --color 0 --rotation 10 --zoom 0.1 --translate 0.05

Prints one JSON line per epoch (train L1, held-out MAE, and the MAE of the mean of the last 5 and
10 epochs' predictions) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from boneage.augment import AugmentConfig, build_augmentation
from boneage.cache import labelled_images
from boneage.model import ModelConfig, build_model
from boneage.sampling import draw_repeats, expected_repeats
from boneage.splits import in_validation
from boneage.training import bn_recalibrate, predict_batches, train_epoch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="a labelled cache from `boneage preprocess`")
    p.add_argument("--size", type=int, default=0, help="downsample the cached images to this size (0: as cached)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--epoch-multiple", type=float, default=2.0, help="samples per epoch / training images")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled decay when > 0")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--warmup-epochs", type=int, default=3)
    p.add_argument("--power", type=float, default=0.5, help="category weight power (boneage.sampling)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--rotation", type=float, default=20.0)
    p.add_argument("--zoom", type=float, default=0.15)
    p.add_argument("--translate", type=float, default=0.10)
    p.add_argument("--color", type=float, default=1.0, help="scale of the default contrast/brightness jitter")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--precise-bn-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load(cache: str, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    rows = labelled_images(cache, purpose="train on")
    images = torch.from_numpy(rows.images)
    if size and size != images.shape[-1]:
        images = nn.functional.interpolate(images[:, None].float(), size=(size, size), mode="area")[:, 0]
        images = images.round().clamp(0, 255).to(torch.uint8)
    ages = torch.tensor(rows.boneage, dtype=torch.float32)
    male = torch.tensor(rows.male, dtype=torch.float32)
    return images, ages, male, np.array(rows.ids)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    images, ages, male, ids = load(args.cache, args.size)
    held_out = np.array([in_validation(i, args.val_fraction) for i in ids])
    train, val = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    mean, std = float(ages[train].mean()), float(ages[train].std())
    model = build_model(ModelConfig(dropout=args.dropout, output_offset=mean, output_scale=std))
    optimizer = (torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
                 if args.weight_decay else torch.optim.Adam(model.parameters(), lr=args.lr))
    epoch_size = int(len(train) * args.epoch_multiple)
    steps = epoch_size // args.batch_size
    warmup, total = args.warmup_epochs * steps, args.epochs * steps

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * step / total)) if args.schedule == "cosine" else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    augment = None if args.no_augment else build_augmentation(AugmentConfig(
        rotation_degrees=args.rotation, translate=args.translate, zoom=args.zoom,
        contrast=0.25 * args.color, brightness=0.15 * args.color))
    expected = expected_repeats(ages[train].numpy(), epoch_size, 12, args.power)

    def batches(index: np.ndarray, size: int):
        for start in range(0, len(index), size):
            j = index[start:start + size]
            yield {"image": images[j], "male": male[j], "boneage": ages[j]}

    device = torch.device("cpu")
    print(json.dumps({"train": len(train), "held_out": len(val), "size": int(images.shape[-1]),
                      "mean_predictor_mae": round(float((ages[val] - mean).abs().mean()), 2)}), flush=True)
    history: list[np.ndarray] = []
    maes: list[float] = []
    start = time.time()
    for epoch in range(args.epochs):
        order = np.repeat(train, draw_repeats(expected, rng))
        rng.shuffle(order)
        order = order[: len(order) // args.batch_size * args.batch_size]  # full batches, as BatchNorm wants
        stats: dict = {}
        loss, _ = train_epoch(model, batches(order, args.batch_size), optimizer, device, augment=augment, amp=False,
                              on_step=lambda _step: scheduler.step(), stats=stats, keep_last=args.precise_bn_batches)
        bn_recalibrate(model, stats["inputs"], amp=False)
        out = predict_batches(model, batches(val, 32), device, amp=False)
        history.append(out["pred"])
        maes.append(float(np.abs(out["pred"] - out["true"]).mean()))
        record = {"epoch": epoch, "train_l1": round(loss, 2), "val_mae": round(maes[-1], 2),
                  "seconds": round(time.time() - start)}
        for k in (5, 10):
            if len(history) >= k:
                record[f"mean_of_last_{k}_mae"] = round(float(np.abs(np.mean(history[-k:], 0) - out["true"]).mean()), 2)
        print(json.dumps(record), flush=True)
    print(json.dumps({"best_val_mae": round(min(maes), 2), "mean_val_mae_last_5": round(float(np.mean(maes[-5:])), 2),
                      "last_val_mae": round(maes[-1], 2)}), flush=True)


if __name__ == "__main__":
    main()
