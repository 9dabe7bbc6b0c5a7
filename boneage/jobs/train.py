"""Ray Train job: DDP training of the bone-age network from the Parquet cache of ``boneage preprocess``.

    boneage train --data CACHE (--val CACHE | --val-fraction 0.2) --out model.pt [--workers 2] [--gpu]
    ray job submit --working-dir . -- python -m boneage train --data s3://b/cache --val-fraction 0.1 \\
        --out s3://b/models/boneage.pt --storage s3://b/runs --workers 8 --gpu

A ``TorchTrainer`` runs ``train_loop`` on every worker: each reads its shard of the Ray Datasets,
augments on its device, and DDP averages the gradients (gloo on CPU, NCCL on GPU). Validation
predictions are gathered from all workers so the metrics are those of the whole validation set.
Rank 0 reports a checkpoint when validation MAE improves and every ``checkpoint_every`` epochs;
Ray keeps the best ones by ``val_mae`` and restarts from the latest after a worker failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneage.files import storage
from boneage.jobs.resumable import from_args
from boneage.logs import set_levels, verbose
from boneage.progress import Progress
from boneage.train.data import cache_labels, cache_preprocess_config, read_ids, repeat_rows, to_arrays
from boneage.train.data import in_validation as _in_validation
from boneage.train.loop import TrainConfig

log = logging.getLogger("boneage.train")
MODEL_FILE = "model.pt"


# --------------------------------------------------------------------------------------------- data
# (the plain helpers are in boneage.train.data)


def build_datasets(train_uri: str, val_uri: str | None, val_fraction: float, config: TrainConfig,
                   exclude: set[str] | None = None, mix_uri: str | None = None) -> tuple:
    """Ray Datasets for training (weighted, repeated) and validation; also the logged distribution.
    ``exclude``: ids used for neither (images kept back for a test elsewhere). ``mix_uri``: a second
    training cache (the same films at another resolution, say) that fills ``config.mix_share`` of each
    epoch; the ids held out of ``train_uri`` (by hash) or excluded are held out of it too, so the same
    film at another resolution never leaks into validation."""
    import ray

    from boneage.files.cache import cache_shards
    from boneage.train.weighting import distribution_table, expected_repeats

    exclude = exclude or set()
    everything = cache_labels(train_uri)
    labels = {i: v for i, v in everything.items() if i not in exclude}
    excluded = len(everything) - len(labels)
    if val_uri:
        train_ids = sorted(labels)
        val_source, val_ids = val_uri, sorted(set(cache_labels(val_uri)) - exclude)
        held_out = set(val_ids)
    else:
        if not 0 < val_fraction < 1:
            raise ValueError("give --val CACHE or a --val-fraction between 0 and 1")
        held_out = {i for i in labels if _in_validation(i, val_fraction)}
        val_ids = sorted(held_out)
        train_ids = sorted(set(labels) - held_out)
        val_source = train_uri
    if not train_ids or not val_ids:
        raise ValueError(f"need labelled images for training and validation; got {len(train_ids)} and {len(val_ids)}")
    sources = [(train_uri, {i: labels[i][0] for i in train_ids})]
    if mix_uri:
        if cache_preprocess_config(mix_uri) != cache_preprocess_config(train_uri):
            raise ValueError(f"--mix {mix_uri} was preprocessed with another config than --data {train_uri}: "
                             "the model would learn two framings")
        # held out: the validation ids of --data, and (with --val-fraction) any id on the hash's validation side
        mixed = {i: age for i, (age, _) in cache_labels(mix_uri).items() if i not in exclude and i not in held_out
                 and not (val_fraction and _in_validation(i, val_fraction))}
        if not mixed:
            raise ValueError(f"--mix {mix_uri} has no labelled images outside the held-out and excluded ids")
        sources.append((mix_uri, mixed))
    ages = [age for _, ids in sources for age in ids.values()]
    description_stats = {"train_age_mean": float(np.mean(ages)), "train_age_std": float(np.std(ages)) or 1.0}
    shares = [1.0] if not mix_uri else [1.0 - config.mix_share, config.mix_share]
    epoch_size = config.epoch_size or len(train_ids)  # a mixed epoch costs what one of --data alone does
    # Both sets are read and decoded once per run (a tenth of a cache would otherwise be decoded whole before
    # each validation, and every epoch would re-read every shard); each epoch then only shuffles the decoded
    # blocks and draws the train set's repeats. Rows within a few batches are shuffled by the worker's buffer.
    def decoded(uri: str, ids: list[str]):
        return ray.data.read_parquet(cache_shards(uri), num_cpus=0.25).map_batches(
            to_arrays, fn_kwargs={"keep_ids": set(ids)}, batch_format="numpy", num_cpus=0.25).materialize()

    parts, tables = [], []
    for (uri, ids), share in zip(sources, shares, strict=True):
        size = epoch_size * share
        repeats = dict(zip(ids, expected_repeats(list(ids.values()), size, config.bin_months, config.weight_power),
                           strict=True))
        parts.append(decoded(uri, sorted(ids)).map_batches(repeat_rows, fn_kwargs={"repeats": repeats},
                                                            batch_format="numpy", num_cpus=0.25))
        tables.append(distribution_table(list(ids.values()), size, config.bin_months, config.weight_power))
    train = (parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])).randomize_block_order()
    val = decoded(val_source, val_ids).map_batches(repeat_rows, batch_format="numpy", num_cpus=0.25)
    mix_stats = {"mix_images": len(sources[1][1]), "mix_categories": tables[1]} if mix_uri else {}
    return train, val, {"train_images": len(train_ids), "val_images": len(val_ids), "excluded_ids": excluded,
                        "categories": tables[0], **mix_stats, **description_stats}


# ------------------------------------------------------------------------------------- worker loop


def _gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate every worker's validation predictions (identical result on every rank)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return arrays
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def _global_mean_loss(loss: float, seen: int) -> float:
    """The epoch's training loss over every worker's samples, not only rank 0's share."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return loss
    totals = torch.tensor([loss * seen if seen else 0.0, float(seen)], dtype=torch.float64)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1]) if totals[1] else float("nan")


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch

    from boneage.network.checkpoint import save_checkpoint
    from boneage.network.model import build_model
    from boneage.prepare.stages import PreprocessConfig
    from boneage.train.augment import build_augmentation
    from boneage.train.loop import EpochOptions, bn_recalibrate, build_scheduler, predict_batches, train_epoch
    from boneage.train.meters import Waited, after_each
    from boneage.train.metrics import evaluate, flat_metrics
    from boneage.train.state import RunProgress, load_training_state, save_training_state

    set_levels()  # the project at INFO, others at WARNING; Ray Train's worker logging writes the lines out
    config = TrainConfig.from_dict(loop_config["train"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    # rank 0's share of an epoch, in batches (about: the repeats of rare ages are drawn each epoch)
    samples = config.epoch_size or loop_config["data_description"]["train_images"]
    batches_per_epoch = math.ceil(samples / context.get_world_size() / config.batch_size)
    torch.manual_seed(config.seed + rank)
    device = ray.train.torch.get_device()
    model = build_model(config.model)
    state = None
    # This run's latest checkpoint after a failure, else --resume's: the whole training state.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and loop_config.get("resume"):
        checkpoint = ray.train.Checkpoint(loop_config["resume"])
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_state(folder)
        model.load_state_dict(state["model"])
    elif loop_config.get("init"):  # fine-tune: weights only
        from boneage.network.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(loop_config["init"]).model.state_dict())
    model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = build_scheduler(optimizer, config)
    start_epoch, best, since_best, history, restores = 0, float("inf"), 0, [], 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, since_best, history = state["epoch"] + 1, state["best"], state["since_best"], state["history"]
        # each epoch's record says how often the run was restored (a worker failure, or --resume)
        restores = history[-1].get("restores", 0) + 1 if history else 1
        if rank == 0:
            log.info("resuming at epoch %d (best val MAE so far %.2f)", start_epoch + 1, best)
    options = EpochOptions(build_augmentation(config.augment), config.amp, keep_last=config.precise_bn_batches)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    dtypes = {"image": torch.uint8, "male": torch.float32, "boneage": torch.float32}
    if loop_config.get("torch_threads") and device.type == "cpu":
        torch.set_num_threads(int(loop_config["torch_threads"]))
    bare = model.module if hasattr(model, "module") else model

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        # A small shuffle buffer: the first batch waits until the buffer is full, every epoch.
        batches = train_shard.iter_torch_batches(batch_size=config.batch_size,
                                                 local_shuffle_buffer_size=4 * config.batch_size,
                                                 drop_last=False, dtypes=dtypes)
        timed = Waited(batches)  # is the epoch input-bound? the seconds spent waiting for batches
        with Progress(batches_per_epoch, f"epoch {epoch + 1}/{config.epochs}", unit="batches", enabled=rank == 0,
                      log_every=30.0) as bar:
            done = train_epoch(model, after_each(timed, lambda: bar.update(1)), optimizer, device, options)
        if config.precise_bn_batches:
            bn_recalibrate(model, done.inputs, config.amp)
        loss, seen = done.loss, done.samples
        loss = _global_mean_loss(loss, seen)
        train_seconds = time.perf_counter() - started
        predictions = _gather(predict_batches(model, val_shard.iter_torch_batches(
            batch_size=2 * config.batch_size, dtypes=dtypes), device, config.amp))
        report = evaluate(predictions["pred"], predictions["true"], predictions["male"])
        metrics = {"epoch": epoch, "train_loss": loss, "train_samples_rank0": seen,
                   "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - started,
                   "train_seconds": train_seconds, "data_wait_seconds": timed.seconds,
                   "torch_threads": torch.get_num_threads(), "restores": restores,
                   **flat_metrics(report)}
        val_mae = metrics["val_mae"]
        scheduler.step(val_mae)
        improved = val_mae < best
        best, since_best = (val_mae, 0) if improved else (best, since_best + 1)
        history.append({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        last = epoch == config.epochs - 1 or since_best >= config.early_stop_patience
        save = improved or (epoch + 1) % config.checkpoint_every == 0 or last
        if rank == 0:
            log.info("epoch %d: train L1 %.2f, val MAE %.2f (best %.2f), %.0f s", epoch + 1, loss, val_mae, best,
                        metrics["epoch_seconds"])
        if save and rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                meta = {"trained": True, "epoch": epoch, "val": report, "train_config": config.to_dict(),
                        "data": loop_config.get("data_description", {}), "history": history}
                save_checkpoint(str(Path(folder) / MODEL_FILE), bare, PreprocessConfig.from_dict(
                    loop_config["preprocess"]), meta)
                save_training_state(folder, bare, optimizer, scheduler, RunProgress(epoch, best, since_best, history))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if since_best >= config.early_stop_patience:
            if rank == 0:
                log.info("early stop: no better validation MAE for %d epochs", since_best)
            break


# ------------------------------------------------------------------------------------------ driver


def _train_logging(train) -> dict:
    """Ray Train's own console lines (worker group started, model moved, checkpoint saved) only with
    --verbose; its log files keep them. A Ray Train without ``LoggingConfig`` (an older one) shows them all."""
    if not hasattr(train, "LoggingConfig"):
        return {}
    return {"logging_config": train.LoggingConfig(log_level="INFO" if verbose() else "WARNING")}


@dataclass(frozen=True)
class TrainData:
    """What is trained and validated on: the caches of ``boneage preprocess`` and what is kept out."""

    data: str  # the cache to train on
    val: str | None = None  # a second cache to validate on; None: ``val_fraction`` of ``data``
    val_fraction: float = 0.0  # held out of ``data`` (stable, by id hash)
    exclude_ids: str | None = None  # CSV whose ids neither set uses (films kept for a test elsewhere)
    # a second training cache, same preprocessing, mixed into each epoch (TrainConfig.mix_share of it): e.g.
    # rsna-100px beside rsna-half; the ids held out of ``data`` stay out of it
    mix: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainData:
        return from_args(cls, args, val_fraction=args.val_fraction or 0.0)


@dataclass(frozen=True)
class RunOptions:
    """Where the run writes, what it starts from and what it keeps (as Ray's ``RunConfig``).

    ``select="best"`` takes the checkpoint with the lowest validation MAE; ``"last"`` the final epoch's,
    for a run on all the data with the epoch count found on a held-out split (its validation set is
    then the training set, so "best" would only pick the best fit)."""

    out: str  # where the chosen model file is written (path or URL)
    storage_path: str | None = None  # Ray Train's storage for checkpoints; None: a temporary folder
    name: str | None = None  # the run's name under ``storage_path``; None: from the time
    resume: str | None = None  # a run checkpoint directory to continue (optimizer state included)
    init: str | None = None  # a model file to fine-tune (weights only)
    select: str = "best"  # which checkpoint becomes ``out``: "best" or "last"
    max_failures: int = 2  # worker failures survived by restoring

    def __post_init__(self) -> None:
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', not {self.select!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return from_args(cls, args, storage_path=args.storage)


@dataclass(frozen=True)
class TrainScaling:
    """What the workers run on (as Ray's ``ScalingConfig``). ``torch_threads`` overrides the threads Ray
    gives each CPU worker (one per reserved CPU), e.g. to let one worker use every core."""

    workers: int = 2
    gpu: bool = False  # one GPU per worker, NCCL
    cpus_per_worker: float | None = None  # None: all but one CPU, shared, at most 1 each
    torch_threads: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainScaling:
        return from_args(cls, args)


def run(data: TrainData | str, output: RunOptions | str, config: TrainConfig | None = None,
        scaling: TrainScaling | None = None) -> dict:
    """Train; copy the chosen checkpoint's self-describing model file to ``output.out``; returns a summary."""
    data = TrainData(data) if isinstance(data, str) else data
    output = RunOptions(output) if isinstance(output, str) else output
    scaling = scaling or TrainScaling()
    import ray.train
    from ray.train.torch import TorchTrainer

    from boneage.raycluster import ensure_ray

    config = config or TrainConfig()
    ray = ensure_ray(worker_logs=True)  # the epochs are logged by the workers
    cpus_per_worker = scaling.cpus_per_worker
    if cpus_per_worker is None:  # leave a CPU to Ray Data's reading on a small machine
        cpus_per_worker = min(1.0, max(0.25, (ray.cluster_resources().get("CPU", 1) - 1.0) / scaling.workers))
    exclude = set(read_ids(data.exclude_ids)) if data.exclude_ids else set()
    train_ds, val_ds, description = build_datasets(data.data, data.val, data.val_fraction, config, exclude,
                                                   mix_uri=data.mix)
    log.info("training on %d images, validating on %d", description["train_images"], description["val_images"])
    if data.mix:
        log.info("mixing in %d images of %s: %.0f%% of each epoch", description["mix_images"], data.mix,
                 100 * config.mix_share)
    log.info("bone-age categories before and after weighting (samples per epoch):\n%s",
             "\n".join(f"  {r['category']:>10}: {r['images']:>5} images, weight {r['weight']:.4f}, "
                       f"{r['samples_per_epoch']:.1f} samples/epoch" for r in description["categories"]))
    resume, init = output.resume, output.init
    if resume or init:  # the network must be the one whose weights are loaded
        from boneage.network.checkpoint import load_checkpoint

        source = f"{resume.rstrip('/')}/{MODEL_FILE}" if resume else init
        config = dataclasses.replace(config, model=dataclasses.replace(load_checkpoint(source).model.config,
                                                                       pretrained=None))
    elif (config.model.output_offset, config.model.output_scale) == (0.0, 1.0):
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, output_offset=round(description["train_age_mean"], 2),
            output_scale=round(description["train_age_std"], 2)))
    if resume and "://" not in resume:  # the workers open it with pyarrow, which needs an absolute path
        resume = str(Path(resume).resolve())
    if init and "://" not in init:  # the workers run in another directory
        init = str(Path(init).resolve())
    storage_path = output.storage_path or str(Path(tempfile.gettempdir()) / "boneage-runs")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    name = output.name or f"boneage-{time.strftime('%Y%m%d-%H%M%S')}"
    loop_config = {"train": config.to_dict(), "preprocess": cache_preprocess_config(data.data), "init": init,
                   "resume": resume, "torch_threads": scaling.torch_threads,
                   "data_description": {"train": data.data, "mix": data.mix,
                                        "val": data.val or f"{data.val_fraction:.0%} of train by id hash",
                                        **description}}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                                         checkpoint_score_attribute="val_mae",
                                                         checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=output.max_failures),
            **_train_logging(ray.train),
        ),
        datasets={"train": train_ds, "val": val_ds},
    )
    result = trainer.fit()
    best_checkpoint, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1]["val_mae"])
    chosen = best_checkpoint if output.select == "best" else result.checkpoint
    with chosen.as_directory() as folder:
        storage.write_bytes(output.out, (Path(folder) / MODEL_FILE).read_bytes())
    frame = result.metrics_dataframe
    epochs_run = sorted(int(e) for e in frame["epoch"]) if frame is not None and "epoch" in frame else []
    return {"out": output.out, "selected": output.select, "best_val_mae": best_metrics["val_mae"],
            "best_epoch": best_metrics["epoch"] + 1,
            "epochs_checkpointed": epochs_run, "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
            "best_metrics": best_metrics, "run": result.path, "checkpoints": [c.path for c, _ in result.best_checkpoints],
            **description}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_json(storage.read_bytes(args.config).decode()) if args.config else TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None and f.name not in ("model", "augment")}
    model = base.model
    if args.backbone or args.pretrained:
        model = dataclasses.replace(model, **{k: v for k, v in (("backbone", args.backbone),
                                                                  ("pretrained", args.pretrained)) if v})
    return dataclasses.replace(base, model=model, **overrides)


def run_from_args(args: argparse.Namespace) -> int:
    summary = run(TrainData.from_args(args), RunOptions.from_args(args), config_from_args(args),
                  TrainScaling.from_args(args))
    print(f"best validation MAE {summary['best_val_mae']:.2f} months at epoch {summary['best_epoch']}; "
          f"model written to {summary['out']}; run in {summary['run']}")
    return 0
