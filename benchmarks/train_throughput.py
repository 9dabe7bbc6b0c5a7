"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop, same data and model.

    .venv/bin/python benchmarks/train_throughput.py [--cache DIR] [--backbone resnet34] [--epochs 2]

Both run ``boneage.train.loop.train_epoch`` on the same cached images with the same weighted repeats,
augmentation and batch size; the plain loop uses as many torch threads as a Ray worker had. Samples
per second count training steps only, after a warm-up epoch (validation and start-up excluded;
the wall time including them is printed apart).
On a GPU machine add ``--gpu`` (bf16 autocast, channels_last, pinned memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from boneage.devices import select_device
from boneage.files.cache import labelled_images
from boneage.network.model import ModelConfig, build_model
from boneage.train.loop import EpochOptions, TrainConfig, train_epoch
from boneage.train.weighting import draw_repeats, expected_repeats


def plain_loop(cache: str, config: TrainConfig, threads: int, gpu: bool) -> float:
    from boneage.train.augment import build_augmentation

    torch.set_num_threads(threads)
    rows = labelled_images(cache, purpose="train on")
    images, ages, male = rows.images, rows.boneage.astype(np.float32), rows.male.astype(np.float32)
    device = select_device("cuda" if gpu else "cpu")
    model = build_model(config.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    augment = build_augmentation(config.augment)
    rng = np.random.default_rng(0)
    expected = expected_repeats(ages, config.epoch_size, config.bin_months, config.weight_power)
    samples, seconds = 0, 0.0
    for epoch in range(config.epochs):
        index = rng.permutation(np.repeat(np.arange(len(ages)), draw_repeats(expected, rng)))
        batches = ({"image": torch.from_numpy(images[i]), "male": torch.from_numpy(male[i]),
                    "boneage": torch.from_numpy(ages[i])}
                   for i in np.array_split(index, max(1, len(index) // config.batch_size)))
        start = time.perf_counter()
        seen = train_epoch(model, batches, optimizer, device, EpochOptions(augment, config.amp)).samples
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:  # the first epoch is warm-up, as in ray_run
            seconds += time.perf_counter() - start
            samples += seen
    return samples / seconds


def ray_run(cache: str, config: TrainConfig, workers: int, gpu: bool, storage: str,
            torch_threads: int | None = None) -> dict:
    from boneage.jobs.train import RunOptions, TrainData, TrainScaling, run

    start = time.perf_counter()
    summary = run(TrainData(cache, val_fraction=0.2),
                  RunOptions(str(Path(storage) / f"model-{workers}.pt"), storage_path=storage,
                             name=f"bench-{workers}w-{int(start)}"),
                  config, TrainScaling(workers=workers, gpu=gpu, torch_threads=torch_threads))
    wall = time.perf_counter() - start
    from boneage.network.checkpoint import load_checkpoint

    metrics = load_checkpoint(str(Path(summary["latest_checkpoint"]) / "model.pt")).metadata["history"]
    measured = metrics[1:]  # the first epoch is warm-up (dataset start-up, allocator)
    samples = sum(m["train_samples_rank0"] for m in measured) * workers
    seconds = sum(m["train_seconds"] for m in measured)
    return {"samples_per_s": samples / seconds, "wall_s": wall, "threads": metrics[-1]["torch_threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="out/bench-train-cache")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna"))
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--epochs", type=int, default=3, help="the first one is warm-up and not counted")
    parser.add_argument("--epoch-size", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--storage", default="out/bench-train-runs")
    parser.add_argument("--torch-threads", type=int,
                        help="torch threads of the 1-worker run and the plain loop (default: Ray's, one per CPU)")
    args = parser.parse_args()
    if not Path(args.cache, "_config.json").exists():
        from boneage.jobs.preprocess import PreprocessOptions
        from boneage.jobs.preprocess import run as preprocess
        from boneage.jobs.resumable import Resources

        preprocess([f"{args.data}/train"], args.cache, PreprocessOptions(labels=f"{args.data}/train.csv"),
                   Resources(use_ray=False))
    config = TrainConfig(epochs=args.epochs, epoch_size=args.epoch_size, batch_size=args.batch_size,
                         checkpoint_every=1, model=ModelConfig(backbone=args.backbone))
    storage = str(Path(args.storage).resolve())
    one = ray_run(args.cache, config, 1, args.gpu, storage, args.torch_threads)
    plain = plain_loop(args.cache, dataclasses.replace(config), one["threads"], args.gpu)
    result = {"backbone": args.backbone, "image_size": 384, "batch_size": args.batch_size,
              "device": torch.cuda.get_device_name() if args.gpu else "cpu",
              "plain_loop_samples_per_s": round(plain, 2), "ray_1_worker_samples_per_s": round(one["samples_per_s"], 2),
              "ray_overhead": round(1 - one["samples_per_s"] / plain, 3), "ray_1_worker_wall_s": round(one["wall_s"], 1),
              "torch_threads_per_worker": one["threads"]}
    if not args.gpu or torch.cuda.device_count() >= 2:
        two = ray_run(args.cache, config, 2, args.gpu, storage)
        result.update({"ray_2_workers_samples_per_s": round(two["samples_per_s"], 2),
                       "ray_2_workers_wall_s": round(two["wall_s"], 1),
                       "torch_threads_per_worker_2w": two["threads"]})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
