"""Ray Data job: preprocess an image archive in parallel into the Parquet training cache.

    boneage preprocess INPUT... --out URI [--labels CSV] [--sample-grid PNG]
    ray job submit --working-dir . -- python -m boneage preprocess s3://bucket/train --labels s3://bucket/train.csv --out s3://bucket/cache

Files are grouped into chunks (``--chunk-size`` files, the unit of work and of commit); Ray Data
spreads the chunks over the cluster's CPUs and every chunk runs ``boneage.prepare.cache_chunks.process_chunk``,
the same function a plain loop calls. Each chunk reads its files itself, so no node ever holds more
than ``--chunk-size`` decoded films per task, whatever the archive's size. Finished chunks are
committed by a marker and skipped on re-runs; ``--overwrite`` starts again from nothing.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence

from boneage.devices import use_cpu_threads
from boneage.files import storage
from boneage.files.cache import committed_markers, plan_chunks, read_labels, remove_orphan_shards
from boneage.files.parts import claim_output
from boneage.prepare.cache_chunks import process_chunk
from boneage.prepare.stages import PreprocessConfig
from boneage.progress import Progress

log = logging.getLogger("boneage.preprocess")
GIB = 1024**3


class _ChunkProcessor:
    """Ray Data UDF: one batch of chunk descriptions in, one summary row per chunk out."""

    def __init__(self, out: str, config: dict, labels: dict):
        from boneage.prepare.segmentation import get_segmenter

        use_cpu_threads(1)  # one actor per CPU already
        self.out = out
        self.config = PreprocessConfig.from_dict(config)
        self.labels = labels
        get_segmenter(self.config.segmenter)  # a learned segmenter loads here, once per actor

    def __call__(self, batch: dict) -> dict:
        ids, kept, rejected, failed = [], [], [], []
        for cid, paths in zip(batch["chunk_id"], batch["paths"], strict=True):
            result = process_chunk(str(cid), [str(p) for p in paths], self.labels, self.out, self.config)
            ids.append(result.chunk_id)
            kept.append(result.kept)
            rejected.append(len(result.rejected))
            failed.append(len(result.failed))
        return {"chunk_id": ids, "kept": kept, "rejected": rejected, "failed": failed}


def _check_config(out: str, config: PreprocessConfig, overwrite: bool) -> None:
    """One OUT holds one preprocessing config: mixing two would silently corrupt the training set."""
    claim_output(out, {"config_hash": ("preprocessing config", config.config_hash())}, overwrite, "a cache",
                 record={"config": config.to_dict()})


def run(
    inputs: Sequence[str],
    out: str,
    labels_uri: str | None = None,
    *,
    config: PreprocessConfig | None = None,
    chunk_size: int = 16,
    task_memory_gib: float = 1.5,
    overwrite: bool = False,
    sample_grid: str | None = None,
    sample_count: int = 8,
    use_ray: bool = True,
    gpus_per_actor: float | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> dict:
    """Preprocess ``inputs`` into ``out``; returns the summary (also written to OUT/summary.json).

    ``use_ray=False`` runs the same chunks in a plain loop in this process (for comparison).
    ``gpus_per_actor``: GPU share of each actor; by default 0.25 when the segmenter is a network and
    the cluster has GPUs (four actors feed one GPU: decoding and CLAHE stay on their CPUs), else 0.
    ``actors``: most actors (default: the cluster's CPUs now); on an autoscaling cluster give more than
    it has, and Ray adds nodes as the pool grows.
    """
    config = config or PreprocessConfig()
    started = time.perf_counter()
    paths = storage.list_inputs(inputs)
    labels = read_labels(labels_uri) if labels_uri else {}
    _check_config(out, config, overwrite)

    markers = committed_markers(out)
    remove_orphan_shards(out, markers)
    done = {p for m in markers for p in m["paths"]}
    todo = [p for p in paths if p not in done]
    chunks = plan_chunks(todo, config.config_hash(), chunk_size)
    log.info("%d inputs: %d already done, %d to process in %d chunks of up to %d",
             len(paths), len(paths) - len(todo), len(todo), len(chunks), chunk_size)

    sizes = {chunk["chunk_id"]: len(chunk["paths"]) for chunk in chunks}
    with Progress(len(todo), "preprocessing", enabled=progress) as bar:
        if chunks and use_ray:
            for chunk_id in _run_ray(chunks, out, config, labels, task_memory_gib, gpus_per_actor, actors):
                bar.update(sizes[chunk_id])
        else:
            for chunk in chunks:
                process_chunk(chunk["chunk_id"], chunk["paths"], labels, out, config)
                bar.update(len(chunk["paths"]))

    summary = _summarize(out, paths, labels, time.perf_counter() - started, len(paths) - len(todo))
    if sample_grid:
        from boneage.files.montage import write_sample_grid

        write_sample_grid(out, sample_grid, sample_count)
        summary["sample_grid"] = sample_grid
    return summary


def _run_ray(chunks: list[dict], out: str, config: PreprocessConfig, labels: dict, task_memory_gib: float,
             gpus_per_actor: float | None, actors: int | None) -> Iterator[str]:
    """The chunks on a pool of actors; yields each chunk's id once it is committed (for the progress)."""
    from boneage.raycluster import actor_pool, ensure_ray

    ray = ensure_ray()
    if gpus_per_actor is None:
        learned = config.segmenter != "classical"
        gpus_per_actor = 0.25 if learned and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    done = dataset.map_batches(
        _ChunkProcessor,
        fn_constructor_kwargs={"out": out, "config": config.to_dict(), "labels": labels},
        batch_size=1,
        num_cpus=1,
        num_gpus=gpus_per_actor,
        memory=task_memory_gib * GIB,
        compute=actor_pool(actors or int(ray.cluster_resources().get("CPU", 1)), len(chunks)),
    )
    for batch in done.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from (str(chunk_id) for chunk_id in batch.column("chunk_id").to_pylist())


def _summarize(out: str, paths: Sequence[str], labels: dict, seconds: float, skipped: int) -> dict:
    import pandas as pd

    from boneage.files.storage import file_id

    wanted = set(paths)
    markers = [m for m in committed_markers(out) if not wanted.isdisjoint(m["paths"])]
    rejected = [r for m in markers for r in m["rejected"]]
    failed = [r for m in markers for r in m["failed"]]
    kept = sum(m["kept"] for m in markers)
    ids = {file_id(p) for p in paths}
    summary = {
        "inputs": len(paths),
        "kept": kept,
        "rejected": len(rejected),
        "failed": len(failed),
        # refusals of the verdict (boneage.prepare.verdict), and the warnings those films also carried
        "rejected_by_reason": dict(sorted(collections.Counter(
            r for row in rejected for r in str(row["reason"]).split(",")).items())),
        "skipped_already_done": skipped,
        "labels_without_image": sorted(set(labels) - ids),
        "images_without_label": sorted(ids - set(labels)) if labels else [],
        "seconds": round(seconds, 1),
        "images_per_second": round((len(paths) - skipped) / seconds, 2) if seconds > 0 else None,
        "out": out,
    }
    pd.DataFrame(rejected, columns=["id", "path", "reason", "detail"]).to_csv(f"{out.rstrip('/')}/rejected.csv",
                                                                             index=False)
    pd.DataFrame(failed, columns=["id", "path", "error"]).to_csv(f"{out.rstrip('/')}/failed.csv", index=False)
    storage.write_bytes(f"{out.rstrip('/')}/summary.json", json.dumps(summary, indent=2).encode())
    return summary


def print_summary(summary: dict, file=sys.stdout) -> None:
    total = summary["kept"] + summary["rejected"] + summary["failed"]
    print(f"inputs {summary['inputs']}: kept {summary['kept']}, rejected {summary['rejected']}, "
          f"failed {summary['failed']} (sum {total}){'' if total == summary['inputs'] else '  MISMATCH'}", file=file)
    if summary.get("rejected_by_reason"):
        print("rejected for: " + ", ".join(f"{r} {n}" for r, n in summary["rejected_by_reason"].items()), file=file)
    if summary["skipped_already_done"]:
        print(f"{summary['skipped_already_done']} inputs were already done in an earlier run and were not redone",
              file=file)
    for key, label in (("labels_without_image", "labels without an image"),
                       ("images_without_label", "images without a label")):
        items = summary[key]
        if items:
            print(f"{len(items)} {label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}", file=file)
    out = summary["out"].rstrip("/")
    print(f"cache: {out}/kept/  rejected: {out}/rejected.csv  failed: {out}/failed.csv  "
          f"({summary['seconds']} s, {summary['images_per_second']} images/s)", file=file)


def run_from_args(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("segmenter", args.segmenter), ("min_contrast", args.min_contrast),
                                   ("output_size", args.output_size)) if v is not None}
    config = dataclasses.replace(PreprocessConfig.named(args.config), **overrides)
    summary = run(args.inputs, args.out, args.labels, config=config, chunk_size=args.chunk_size,
                  task_memory_gib=args.task_memory_gib, overwrite=args.overwrite, sample_grid=args.sample_grid,
                  sample_count=args.sample_count, use_ray=not args.no_ray, gpus_per_actor=args.gpus_per_actor,
                  actors=args.actors)
    print_summary(summary)
    return 0
