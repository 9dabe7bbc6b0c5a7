"""Ray Data job: preprocess an image archive in parallel into the Parquet training cache.

    boneage preprocess INPUT... --out URI [--labels CSV] [--sample-grid PNG]
    ray job submit --working-dir . -- python -m boneage preprocess s3://bucket/train --labels s3://bucket/train.csv --out s3://bucket/cache

Files are grouped into chunks (``--chunk-size`` files, the unit of work and of commit); Ray Data
spreads the chunks over the cluster's CPUs and every chunk runs ``boneage.prepare.cache_chunks.process_chunk``,
the same function a plain loop calls. Each chunk reads its files itself, so no node ever holds more
than ``--chunk-size`` decoded films per task, whatever the archive's size. Finished chunks are
committed by a marker and skipped on re-runs; ``--overwrite`` starts again from nothing. Listing, claiming
OUT, resuming, the pool and the summary file are the resumable job's (``boneage.jobs.resumable``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence

import pandas as pd
import pyarrow as pa

from boneage.devices import use_cpu_threads
from boneage.files.cache import KEPT, committed_markers, plan_chunks, read_labels
from boneage.files.storage import file_id
from boneage.jobs import resumable
from boneage.jobs.resumable import ChunkJob, ChunkWorker, Output, Resources, RunFigures, Stage
from boneage.prepare.cache_chunks import process_chunk
from boneage.prepare.stages import PreprocessConfig

log = logging.getLogger("boneage.preprocess")
OUTCOME_SCHEMA = pa.schema([("path", pa.string()), ("outcome", pa.string())])  # a worker's row per file


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """What preprocessing computes: the config every film goes through, the labels it joins, and the
    sample montage written at the end."""

    config: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    labels: str | None = None  # RSNA-format CSV: id,boneage,male
    sample_grid: str | None = None  # PNG: a montage of inputs beside their outputs
    sample_count: int = 8

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PreprocessOptions:
        overrides = {k: v for k, v in (("segmenter", args.segmenter), ("min_contrast", args.min_contrast),
                                       ("output_size", args.output_size)) if v is not None}
        config = dataclasses.replace(PreprocessConfig.named(args.config), **overrides)
        return resumable.from_args(cls, args, config=config)


class _ChunkProcessor(ChunkWorker):
    """Ray Data UDF: each chunk read, preprocessed and committed (its shard, then its marker) by the worker;
    one row per file comes back, with its outcome."""

    def __init__(self, out: str, config: dict, labels: dict):
        from boneage.prepare.segmentation import get_segmenter

        use_cpu_threads(1)  # one actor per CPU already
        ray = sys.modules.get("ray")  # an actor on Ray: its node goes in each chunk's marker (not --no-ray)
        self.node = ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else None
        self.out = out
        self.config = PreprocessConfig.from_dict(config)
        self.labels = labels
        get_segmenter(self.config.segmenter)  # a learned segmenter loads here, once per actor

    def chunk(self, chunk: dict) -> pa.Table:
        result = process_chunk(str(chunk["chunk_id"]), [str(p) for p in chunk["paths"]], self.labels, self.out,
                               self.config, node=self.node)
        outcomes = {row["path"]: "refused" for row in result.rejected} | {row["path"]: "failed" for row in result.failed}
        rows = [{"path": p, "outcome": outcomes.get(p, "kept")} for p in result.paths]
        return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA)


class PreprocessJob(ChunkJob):
    """Preprocessing as a resumable job: each worker commits its own chunk, so no film crosses the network
    twice and no node holds more than a chunk of decoded films."""

    log = log
    verb, label, claims = "process", "preprocessing", "a cache"
    parts, part_key = KEPT, "shard"
    chunk_size = 16
    failures_fail = False  # a training cache goes without an unreadable film; failed.csv lists it

    def __init__(self, options: PreprocessOptions, output: Output, resources: Resources):
        super().__init__(output, resources)
        self.options, self.config = options, options.config

    def start(self) -> None:
        self.labels = read_labels(self.options.labels) if self.options.labels else {}

    def identity(self) -> tuple[dict[str, tuple[str, object]], dict]:
        """One OUT holds one preprocessing config: mixing two would silently corrupt the training set."""
        return {"config_hash": ("preprocessing config", self.config.config_hash())}, {"config": self.config.to_dict()}

    def plan(self, todo: list[str], chunk_size: int) -> list[dict]:
        return plan_chunks(todo, self.config.config_hash(), chunk_size)

    def stages(self, cluster: dict[str, float]) -> list[Stage]:
        """One pool of actors, one CPU each; ``gpus_per_actor`` by default 0.25 when the segmenter is a network
        and the cluster has GPUs (four actors feed one GPU: decoding and CLAHE stay on their CPUs), else 0;
        ``actors`` by default the cluster's CPUs now (on an autoscaling cluster give more: Ray adds nodes)."""
        share = self.resources.gpus_per_actor
        if share is None:
            share = 0.25 if self.config.segmenter != "classical" and cluster.get("GPU", 0) > 0 else 0.0
        return [Stage(_ChunkProcessor, {"out": self.out, "config": self.config.to_dict(), "labels": self.labels},
                      gpus=share, memory_gib=self.resources.task_memory_gib,
                      actors=self.resources.actors or int(cluster.get("CPU", 1)))]

    def local(self) -> Callable[[dict], pa.Table]:
        return _ChunkProcessor(self.out, self.config.to_dict(), self.labels).chunk

    def summarize(self, figures: RunFigures) -> dict:
        paths, out = figures.listing.paths, self.out.rstrip("/")
        wanted = set(paths)
        markers = [m for m in committed_markers(self.out) if not wanted.isdisjoint(m["paths"])]
        refused = [r for m in markers for r in m["rejected"]]  # the marker's key since the first caches
        failed = [r for m in markers for r in m["failed"]]
        ids = {file_id(p) for p in paths}
        pd.DataFrame(refused, columns=["id", "path", "reason", "detail"]).to_csv(f"{out}/refused.csv", index=False)
        pd.DataFrame(failed, columns=["id", "path", "error"]).to_csv(f"{out}/failed.csv", index=False)
        return {
            "inputs": len(paths),
            "kept": sum(m["kept"] for m in markers),
            "refused": len(refused),
            "failed": len(failed),
            # refusals of the verdict (boneage.prepare.verdict), and the warnings those films also carried
            "refused_by_reason": dict(sorted(collections.Counter(
                r for row in refused for r in str(row["reason"]).split(",")).items())),
            "labels_without_image": sorted(set(self.labels) - ids),
            "images_without_label": sorted(ids - set(self.labels)) if self.labels else [],
            **figures.as_summary(),
            "out": self.out,
        }

    def finish(self, summary: dict, figures: RunFigures) -> None:
        if self.options.sample_grid:
            from boneage.files.montage import write_sample_grid

            write_sample_grid(self.out, self.options.sample_grid, self.options.sample_count)
            summary["sample_grid"] = self.options.sample_grid


def run(inputs: Sequence[str], output: Output | str, options: PreprocessOptions | None = None,
        resources: Resources | None = None) -> dict:
    """Preprocess ``inputs`` into ``output``; returns the summary (also written to OUT/summary.json)."""
    output = Output(output) if isinstance(output, str) else output
    return resumable.run_job(PreprocessJob(options or PreprocessOptions(), output, resources or Resources()), inputs)


def print_summary(summary: dict, file=sys.stdout) -> None:
    total = summary["kept"] + summary["refused"] + summary["failed"]
    print(f"inputs {summary['inputs']}: kept {summary['kept']}, refused {summary['refused']}, "
          f"failed {summary['failed']} (sum {total}){'' if total == summary['inputs'] else '  MISMATCH'}", file=file)
    if summary.get("refused_by_reason"):
        print("refused for: " + ", ".join(f"{r} {n}" for r, n in summary["refused_by_reason"].items()), file=file)
    if summary["skipped_already_done"]:
        print(f"{summary['skipped_already_done']} inputs were already done in an earlier run and were not redone",
              file=file)
    for key, label in (("labels_without_image", "labels without an image"),
                       ("images_without_label", "images without a label")):
        items = summary[key]
        if items:
            print(f"{len(items)} {label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}", file=file)
    out = summary["out"].rstrip("/")
    print(f"cache: {out}/kept/  refused: {out}/refused.csv  failed: {out}/failed.csv  "
          f"({summary['seconds']} s, {summary['images_per_second']} images/s)", file=file)
    if summary.get("interrupted"):
        print("interrupted: re-run the same command to preprocess the rest", file=file)


def run_from_args(args: argparse.Namespace) -> int:
    """The command: 0 (failed films are listed in failed.csv, not a failed job), 130 when stopped."""
    return resumable.run_command(
        lambda: run(args.inputs, Output.from_args(args), PreprocessOptions.from_args(args), Resources.from_args(args)),
        print_summary, failures_fail=PreprocessJob.failures_fail)

