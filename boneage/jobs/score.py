"""Ray Data job: score a hospital archive (bone age for every radiograph) into a Parquet or CSV table.

    boneage score INPUT... --out URI [--model URI] [--manifest CSV] [--format csv]
    ray job submit --working-dir . -- python -m boneage score s3://pacs/export --manifest s3://pacs/manifest.csv --out s3://pacs/bone-age

The pipeline: chunks of files -> read and preprocess on CPU tasks (``boneage.predict.scoring.prepare_chunk``,
the same preprocessing as training, with the model's own config) -> a pool of ``Predictor`` actors
(model loaded once per actor; one GPU each when the cluster has GPUs, one CPU each otherwise)
-> result rows streamed back to this driver, which commits them in parts (``boneage.files.parts``: part
first, marker last) and shows the progress. Re-running the same command scores only the files
without a committed result; ``--no-ray`` runs the same functions in a plain loop in this process.
Listing, claiming OUT, resuming, the pool and the commits are the resumable job's
(``boneage.jobs.resumable``); this module says what scoring computes.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Sequence

import pyarrow as pa

from boneage.devices import use_cpu_threads
from boneage.jobs import resumable
from boneage.jobs.arguments import CPU_BATCH, GPU_BATCH
from boneage.jobs.manifest import Manifest, read_manifest, refused_rows
from boneage.jobs.resumable import ChunkJob, ChunkWorker, Output, Resources, RunFigures, Stage
from boneage.predict.predictor import Predictor, default_model_uri
from boneage.predict.scoring import (
    PARTS,
    commit_results,
    manifest_key,
    outcome,
    plan,
    predict_table,
    prepare_chunk,
    read_results,
    score_chunk,
    write_results,
)
from boneage.prepare.stages import PreprocessConfig

log = logging.getLogger("boneage.score")


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """What scoring computes: the model and how it scores, each film's sex, what a row keeps, and what is
    written. Each field is the command's option of the same name (``resumable.from_args``): a new option
    is a field here (used where it acts: :meth:`load` for the model's) and its flag in jobs/arguments.py."""

    model: str | None = None  # None: $BONEAGE_MODEL, else the shipped default
    manifest: str | None = None  # CSV: path,sex[,chronological_age_months]
    sex: str | None = None  # of every film that the manifest and the DICOM header give none
    tta: int | None = None
    score_anyway: bool = False  # a refused film's bone age too, beside the reason
    keep_identifiers: bool = False
    retry_failed: bool = True  # a re-run scores what failed before again
    format: str = "parquet"  # of OUT/results.*
    write_back: bool = False  # a DICOM Structured Report of each result into its film's study (DICOMweb)
    secondary_capture: bool = False  # with write_back: the one-page report as a Secondary Capture too

    def load(self, device: str | None, batch_size: int) -> Predictor:
        """The model as this job scores with it: in the driver and in every actor alike."""
        return Predictor.load(self.model or default_model_uri(), device=device, batch_size=batch_size, tta=self.tta,
                              score_anyway=self.score_anyway)


def _prepare_batch(batch: pa.Table, config: dict, identifiers: bool) -> pa.Table:
    """Ray Data UDF (CPU task): chunk descriptions in, one prepared row per file out."""
    use_cpu_threads(1)  # one task per CPU already
    preprocess_config = PreprocessConfig.from_dict(config)
    tables = [prepare_chunk(c, preprocess_config, identifiers) for c in batch.to_pylist()]
    return pa.concat_tables(tables)


class _PredictorActor:
    """Ray Data UDF (actor): the model is loaded once per actor, then scores batch after batch."""

    def __init__(self, options: ScoreOptions, version: str, device: str, batch_size: int):
        if device == "cpu":
            use_cpu_threads(1)  # the actor holds one CPU; the others preprocess
        self.predictor = options.load(device, batch_size)
        if self.predictor.version != version:  # e.g. a worker whose $BONEAGE_MODEL differs from the driver's
            raise RuntimeError(f"worker loaded model {self.predictor.version}, the driver {version}")
        self.identifiers = options.keep_identifiers

    def __call__(self, batch: pa.Table) -> pa.Table:
        return predict_table(self.predictor, batch, self.identifiers)


class _ChunkScorerActor(ChunkWorker, _PredictorActor):
    """Ray Data UDF (actor), CPU clusters: chunk descriptions in, result rows out. Each actor holds one
    CPU and runs both halves (:func:`boneage.predict.scoring.score_chunk`, as the plain loop does): on CPUs
    the model is a small share of an image's cost, so an actor that only predicted would idle."""

    def chunk(self, chunk: dict) -> pa.Table:
        return score_chunk(self.predictor, chunk, self.identifiers)


class ScoreJob(ChunkJob):
    """Scoring as a resumable job: the driver commits the result rows; a failed film is retried."""

    log = log
    verb, label, claims = "score", "scoring", "results"
    parts, part_key = PARTS, "part"
    chunk_size = 64  # files per Ray Data block: 64 ran 1.14x faster than 16 on 2,000 files, 2 CPUs
    commits_on_driver = True

    def __init__(self, options: ScoreOptions, output: Output, resources: Resources):
        super().__init__(output, resources)
        # resolved here: a worker whose $BONEAGE_MODEL differs loads the driver's model (and the version check says so)
        self.options = dataclasses.replace(options, model=options.model or default_model_uri())
        self.identifiers = options.keep_identifiers

    def start(self) -> None:
        self.sheet = read_manifest(self.options.manifest) if self.options.manifest else Manifest()
        # The driver loads the model too: its version names the results and guards resumption.
        resources = self.resources
        self.predictor: Predictor | None = self.options.load("cpu" if resources.use_ray else resources.device,
                                                             resources.batch_size or CPU_BATCH)
        self.version = self.predictor.version
        self.preprocess_config = self.predictor.preprocess_config.to_dict()  # the model's own: the CPU stage's

    def identity(self) -> tuple[dict[str, tuple[str, object]], dict]:
        return ({"model_version": ("model", self.version),
                 "keep_identifiers": ("--keep-identifiers setting", self.identifiers),
                 "score_anyway": ("--score-anyway setting", self.options.score_anyway)},
                {"model": self.options.model})

    def retry(self, paths: Sequence[str]) -> set[str]:
        failed = _failed(self.out, paths, self.identifiers)
        if failed and self.options.retry_failed:
            log.info("%d inputs failed in an earlier run and are scored again (--no-retry-failed keeps them)",
                     len(failed))
        elif failed:
            log.info("%d inputs failed in an earlier run and are kept as they are (--no-retry-failed)", len(failed))
        return failed if self.options.retry_failed else set()

    def ready(self, todo: list[str]) -> pa.Table | None:
        refused = [p for p in todo if manifest_key(p) in self.sheet.problems]  # bad_input rows, never scored
        if not refused:
            return None
        log.warning("manifest: %d files refused (bad_input), e.g. %s", len(refused),
                    self.sheet.problems[manifest_key(refused[0])])
        return refused_rows(refused, self.sheet, self.version, self.identifiers)

    def plan(self, todo: list[str], chunk_size: int) -> list[dict]:
        entries = self.sheet.entries
        chunks = plan([p for p in todo if manifest_key(p) not in self.sheet.problems], entries, self.version,
                      chunk_size, self.options.sex)
        if entries:
            matched = sum(1 for c in chunks for s in c["sexes"] if s)
            log.info("manifest: %d entries, sex given for %d of the %d files to score", len(entries), matched,
                     len(todo))
        return chunks

    def describe(self) -> str:
        return f"model {self.version}"

    def stages(self, cluster: dict[str, float]) -> list[Stage]:
        gpus, cpus = cluster.get("GPU", 0), int(cluster.get("CPU", 1))
        resources = self.resources
        share = resources.gpus_per_actor if resources.gpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
        on_gpu = share > 0
        # GPUs: CPU tasks read and preprocess, one Predictor actor per GPU scores big batches. CPUs only:
        # one actor per CPU reads, preprocesses and scores its own chunks (measured: splitting the CPUs
        # between preparing and predicting left the predicting half idle, 0.7x a plain loop on 2 CPUs).
        actors = resources.actors or (max(1, int(gpus / share)) if on_gpu else max(1, cpus))
        batch_size = resources.batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)
        log.info("Ray: %d CPUs, %g GPUs; up to %d %s actor(s), batch %d", cpus, gpus, actors,
                 "Predictor (GPU)" if on_gpu else "read+preprocess+predict (CPU)", batch_size)
        self.predictor = None  # the actors load their own
        model = {"options": self.options, "version": self.version, "device": "cuda" if on_gpu else "cpu",
                 "batch_size": batch_size}
        if not on_gpu:
            return [Stage(_ChunkScorerActor, model, memory_gib=resources.task_memory_gib, actors=actors)]
        return [Stage(_prepare_batch, {"config": self.preprocess_config, "identifiers": self.identifiers},
                      memory_gib=resources.task_memory_gib),
                Stage(_PredictorActor, model, batch_size=batch_size, gpus=share, actors=actors)]

    def local(self) -> Callable[[dict], pa.Table]:
        return functools.partial(score_chunk, self.predictor, identifiers=self.identifiers)

    def commit(self, rows: list[dict]) -> None:
        commit_results(self.out, rows, self.version, self.identifiers)

    def summarize(self, figures: RunFigures) -> dict:
        listing = figures.listing
        paths, not_read = listing.paths, listing.skipped
        frame = read_results(self.out, paths, self.identifiers)
        counts = collections.Counter(outcome(row) for row in _records(frame))
        errors = collections.Counter(str(code) for code in frame["error_code"].dropna())
        reasons = collections.Counter(r for text in frame["reasons"].dropna() for r in str(text).split(","))
        results = write_results(self.out, frame, self.options.format)
        return {
            # Every entry found; scored + refused + failed + skipped + not_scored_yet add up to it. The three
            # outcomes count the results in OUT for these inputs, whichever run wrote them (this run's: below).
            "inputs": len(paths) + len(not_read),
            "scored": counts["scored"],
            "refused": counts["refused"],
            "failed": counts["failed"],
            "skipped": len(not_read),  # not read: not an image, not a regular file, a link loop (storage.SKIP_REASONS)
            "skipped_by_reason": listing.by_reason(),
            "skipped_files": [{"path": path, "reason": reason} for path, reason in not_read.items()],
            "by_reason": dict(sorted(reasons.items())),
            "not_scored_yet": len(paths) - len(frame),
            "errors_by_code": dict(sorted(errors.items())),
            **figures.as_summary(),
            "model_version": self.version,
            "results": results,
            "out": self.out,
        }

    def finish(self, summary: dict, figures: RunFigures) -> None:
        """``write_back``: each film read from a DICOMweb archive gets a DICOM Structured Report of its
        result in its own study (:mod:`boneage.jobs.writeback`), once per film and model version;
        ``secondary_capture`` adds the one-page report with its heatmap as a Secondary Capture image."""
        if not self.options.write_back or summary["interrupted"]:
            return
        from boneage.jobs.writeback import write_back

        rows = _records(read_results(self.out, figures.listing.paths, self.identifiers))
        pages = self.options.load("cpu", CPU_BATCH) if self.options.secondary_capture else None
        summary["structured_reports"] = write_back(rows, progress=self.output.progress, secondary_capture=pages)


def run(inputs: Sequence[str], output: Output | str, options: ScoreOptions | None = None,
        resources: Resources | None = None) -> dict:
    """Score ``inputs`` into ``output``; returns the summary (also written to OUT/summary.json).

    A refused film (not a hand, no hand found) is a row with its reason and no bone age, unless
    ``score_anyway``; the summary counts each reason. A re-run scores what has no result yet and, with
    ``retry_failed``, what failed (an unreadable file, an unknown sex, a bad manifest row): its new row
    replaces the old. A Ctrl-C commits what is scored and returns a summary with ``interrupted``.
    """
    output = Output(output) if isinstance(output, str) else output
    return resumable.run_job(ScoreJob(options or ScoreOptions(), output, resources or Resources()), inputs)


def _failed(out: str, paths: Sequence[str], identifiers: bool) -> set[str]:
    """Inputs whose committed result is a failure: what a re-run retries."""
    frame = read_results(out, paths, identifiers)
    return set(frame.loc[frame["error"].notna(), "path"])


def _records(frame) -> list[dict]:
    """The results table's rows as dicts, a missing value as None (not NaN)."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def print_summary(summary: dict, file=None) -> None:
    file = file or sys.stdout
    total = summary["scored"] + summary["refused"] + summary["failed"] + summary["skipped"]
    missing = "" if total == summary["inputs"] else f"  ({summary['not_scored_yet']} not scored yet)"
    print(f"inputs {summary['inputs']}: scored {summary['scored']}, refused {summary['refused']}, "
          f"failed {summary['failed']}, skipped {summary['skipped']} (sum {total}){missing}", file=file)
    if summary["skipped"]:
        print("skipped, not read: " + ", ".join(f"{r} {n}" for r, n in summary["skipped_by_reason"].items())
              + f" (e.g. {summary['skipped_files'][0]['path']}; all in summary.json)", file=file)
    if summary["by_reason"]:
        print("flags (refusals and warnings): " + ", ".join(f"{r} {n}" for r, n in summary["by_reason"].items()),
              file=file)
    if summary["errors_by_code"]:
        print("failures: " + ", ".join(f"{code} {n}" for code, n in summary["errors_by_code"].items()), file=file)
    if summary["skipped_already_done"]:
        print(f"{summary['skipped_already_done']} inputs already had a result from an earlier run and were not redone",
              file=file)
    if summary["retried_failed"]:
        print(f"{summary['retried_failed']} inputs that had failed in an earlier run were processed again", file=file)
    if summary["failed"]:
        print(f"{summary['failed']} failed: correct what the failures say (a film of unknown sex needs --sex M|F or "
              "a --manifest), then re-run the same command: failed inputs are retried", file=file)
    print(f"results: {summary['results']}  ({summary['processed_this_run']} processed in {summary['seconds']} s, "
          f"{summary['images_per_second']} images/s; model {summary['model_version']})", file=file)
    if summary.get("interrupted"):
        print("interrupted: re-run the same command to score the rest", file=file)


def run_from_args(args: argparse.Namespace) -> int:
    """The command: 0 when every input was scored or refused with a reason (as predict), 1 when one failed,
    130 when stopped, 3 when the archive is down or refuses access (``boneage.errors.exit_code``)."""
    return resumable.run_command(
        lambda: run(args.inputs, Output.from_args(args), resumable.from_args(ScoreOptions, args),
                    Resources.from_args(args)), print_summary)

