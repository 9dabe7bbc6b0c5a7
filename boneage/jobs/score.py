"""Ray Data job: score a hospital archive (bone age for every radiograph) into a Parquet or CSV table.

    boneage score INPUT... --out URI [--model URI] [--manifest CSV] [--format csv]
    ray job submit --working-dir . -- python -m boneage score s3://pacs/export --manifest s3://pacs/manifest.csv --out s3://pacs/bone-age

The pipeline: chunks of files -> read and preprocess on CPU tasks (``boneage.predict.scoring.prepare_chunk``,
the same preprocessing as training, with the model's own config) -> a pool of ``Predictor`` actors
(model loaded once per actor; one GPU each when the cluster has GPUs, one CPU each otherwise)
-> result rows streamed back to this driver, which commits them in parts (``boneage.files.parts``: part
first, marker last) and shows the progress. Re-running the same command scores only the files
without a committed result; ``--no-ray`` runs the same functions in a plain loop in this process.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence

import pyarrow as pa

from boneage.devices import use_cpu_threads
from boneage.files import storage
from boneage.files.dicomweb import ArchiveError
from boneage.files.parts import claim_output, committed_markers, done_paths, remove_orphan_parts
from boneage.jobs.arguments import CPU_BATCH, GPU_BATCH
from boneage.jobs.manifest import Manifest, read_manifest, refused_rows
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
from boneage.progress import Progress

log = logging.getLogger("boneage.score")
GIB = 1024**3


def _prepare_batch(batch: pa.Table, config: dict, identifiers: bool) -> pa.Table:
    """Ray Data UDF (CPU task): chunk descriptions in, one prepared row per file out."""
    use_cpu_threads(1)  # one task per CPU already
    preprocess_config = PreprocessConfig.from_dict(config)
    tables = [prepare_chunk(c, preprocess_config, identifiers) for c in batch.to_pylist()]
    return pa.concat_tables(tables)


class _PredictorActor:
    """Ray Data UDF (actor): the model is loaded once per actor, then scores batch after batch."""

    def __init__(self, model: str, version: str, device: str, batch_size: int, identifiers: bool,
                 tta: int | None = None, score_anyway: bool = False):
        if device == "cpu":
            use_cpu_threads(1)  # the actor holds one CPU; the others preprocess
        self.predictor = Predictor.load(model, device=device, batch_size=batch_size, tta=tta,
                                        score_anyway=score_anyway)
        if self.predictor.version != version:  # e.g. a worker whose $BONEAGE_MODEL differs from the driver's
            raise RuntimeError(f"worker loaded model {self.predictor.version}, the driver {version}")
        self.identifiers = identifiers

    def __call__(self, batch: pa.Table) -> pa.Table:
        return predict_table(self.predictor, batch, self.identifiers)


class _ChunkScorerActor(_PredictorActor):
    """Ray Data UDF (actor), CPU clusters: chunk descriptions in, result rows out. Each actor holds one
    CPU and runs both halves (:func:`boneage.predict.scoring.score_chunk`, as the plain loop does): on CPUs
    the model is a small share of an image's cost, so an actor that only predicted would idle."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([score_chunk(self.predictor, c, self.identifiers) for c in batch.to_pylist()])


class _Committer:
    """The driver's side: buffers result rows and commits them every ``every`` rows (or ``seconds``)."""

    def __init__(self, out: str, salt: str, identifiers: bool, every: int, progress: Progress,
                 seconds: float = 30.0):
        self.out, self.salt, self.identifiers, self.every, self.seconds = out, salt, identifiers, every, seconds
        self.progress = progress
        self.rows: list[dict] = []
        self.committed = 0
        self.first_at: float | None = None  # perf_counter() when the first results arrived: start-up is over
        self.first_rows = 0  # how many came then
        self._last = time.monotonic()

    def add(self, table: pa.Table) -> None:
        if self.first_at is None:
            self.first_at, self.first_rows = time.perf_counter(), table.num_rows
        self.rows.extend(table.to_pylist())
        self.progress.update(table.num_rows)  # scored; committed by the next flush
        if len(self.rows) >= self.every or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            commit_results(self.out, self.rows, self.salt, self.identifiers)
            self.committed += len(self.rows)
            self.rows = []
        self._last = time.monotonic()


def run(
    inputs: Sequence[str],
    out: str,
    model: str | None = None,
    manifest: str | None = None,
    *,
    fmt: str = "parquet",
    chunk_size: int = 64,  # files per Ray Data block: 64 ran 1.14x faster than 16 on 2,000 files, 2 CPUs
    batch_size: int | None = None,
    commit_every: int = 256,
    keep_identifiers: bool = False,
    overwrite: bool = False,
    use_ray: bool = True,
    gpus_per_actor: float | None = None,
    actors: int | None = None,
    task_memory_gib: float = 1.5,
    device: str | None = None,
    progress: bool = True,
    tta: int | None = None,
    score_anyway: bool = False,
    write_back: bool = False,
    secondary_capture: bool = False,
    sex: str | None = None,
    retry_failed: bool = True,
) -> dict:
    """Score ``inputs`` into ``out``; returns the summary (also written to OUT/summary.json).

    ``write_back``: each film read from a DICOMweb archive gets a DICOM Structured Report of its
    result in its own study (:mod:`boneage.jobs.writeback`), once per film and model version;
    ``secondary_capture`` adds the one-page report with its heatmap as a Secondary Capture image.

    A refused film (not a hand, no hand found) is a row with its reason and no bone age, unless
    ``score_anyway``; the summary counts each reason. ``sex`` is every film's whose manifest row and DICOM
    header give none. A re-run scores what has no result yet and, with ``retry_failed``, what failed (an
    unreadable file, an unknown sex, a bad manifest row): its new row replaces the old.

    ``use_ray=False`` runs the same chunks in a plain loop in this process. A Ctrl-C commits what is
    scored and returns a summary with ``interrupted``; re-running finishes the rest.
    """
    started = time.perf_counter()
    listing = storage.scan_inputs(inputs)
    paths = listing.paths
    sheet = read_manifest(manifest) if manifest else Manifest()
    entries = sheet.entries
    model_uri = model or default_model_uri()
    # The driver loads the model too: its version names the results and guards resumption.
    predictor = Predictor.load(model_uri, device="cpu" if use_ray else device, batch_size=batch_size or CPU_BATCH,
                               tta=tta, score_anyway=score_anyway)
    version = predictor.version
    preprocess_config = predictor.preprocess_config.to_dict()  # the model's own: what the CPU stage must run
    claim_output(out, {"model_version": ("model", version),
                       "keep_identifiers": ("--keep-identifiers setting", keep_identifiers),
                       "score_anyway": ("--score-anyway setting", score_anyway)},
                 overwrite, "results", record={"model": model_uri})

    markers = committed_markers(out)
    remove_orphan_parts(out, PARTS, markers, key="part")
    done = done_paths(markers)
    failed_before = _failed(out, paths, keep_identifiers) if markers else set()
    retried = failed_before if retry_failed else set()
    todo = [p for p in paths if p not in done or p in retried]
    refused = [p for p in todo if manifest_key(p) in sheet.problems]  # bad_input rows, never scored
    chunks = plan([p for p in todo if manifest_key(p) not in sheet.problems], entries, version, chunk_size, sex)
    log.info("%d inputs: %d already done, %d to score in %d chunks of up to %d (model %s)",
             len(paths), len(paths) - len(todo), len(todo), len(chunks), chunk_size, version)
    if retried:
        log.info("%d inputs failed in an earlier run and are scored again (--no-retry-failed keeps them)",
                 len(retried))
    elif failed_before:
        log.info("%d inputs failed in an earlier run and are kept as they are (--no-retry-failed)",
                 len(failed_before))
    if listing.skipped:
        log.warning("%d entries skipped, not read (%s); listed in summary.json", len(listing.skipped),
                    ", ".join(f"{r} {n}" for r, n in listing.by_reason().items()))
    if refused:
        log.warning("manifest: %d files refused (bad_input), e.g. %s", len(refused),
                    sheet.problems[manifest_key(refused[0])])
    if entries:
        matched = sum(1 for c in chunks for s in c["sexes"] if s)
        log.info("manifest: %d entries, sex given for %d of the %d files to score", len(entries), matched,
                 len(todo))

    bar = Progress(len(todo), "scoring", enabled=progress)
    committer = _Committer(out, version, keep_identifiers, commit_every, bar)
    interrupted = False
    try:
        if refused:
            committer.add(refused_rows(refused, sheet, version, keep_identifiers))
        if chunks and use_ray:
            del predictor
            _run_ray(chunks, committer, model_uri=model_uri, version=version, preprocess_config=preprocess_config,
                     batch_size=batch_size, identifiers=keep_identifiers, gpus_per_actor=gpus_per_actor,
                     actors=actors, task_memory_gib=task_memory_gib, progress=progress, tta=tta,
                     score_anyway=score_anyway)
        else:
            for chunk in chunks:
                committer.add(score_chunk(predictor, chunk, keep_identifiers))
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: committing what is scored; re-run the same command to finish")
    finally:
        committer.flush()
        bar.close()
    summary = _summarize(out, listing, fmt=fmt, identifiers=keep_identifiers, version=version,
                         seconds=time.perf_counter() - started, skipped=len(paths) - len(todo), retried=len(retried),
                         scored_now=committer.committed,
                         first_result=None if committer.first_at is None else committer.first_at - started,
                         first_rows=committer.first_rows)
    summary["interrupted"] = interrupted
    if write_back and not interrupted:
        from boneage.jobs.writeback import write_back as store_reports

        frame = read_results(out, paths, keep_identifiers)
        rows = _records(frame)
        pages = Predictor.load(model_uri, device="cpu", tta=tta, score_anyway=score_anyway) if secondary_capture else None
        summary["structured_reports"] = store_reports(rows, progress=progress, secondary_capture=pages)
    return summary


def _run_ray(chunks: list[dict], committer: _Committer, *, model_uri: str, version: str, preprocess_config: dict,
             batch_size: int | None, identifiers: bool, gpus_per_actor: float | None, actors: int | None, task_memory_gib: float,
             progress: bool, tta: int | None = None, score_anyway: bool = False) -> None:
    from boneage.raycluster import actor_pool, ensure_ray

    ray = ensure_ray()
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), int(resources.get("CPU", 1))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus > 0 else 0.0
    on_gpu = gpus_per_actor > 0
    # GPUs: CPU tasks read and preprocess, one Predictor actor per GPU scores big batches. CPUs only:
    # one actor per CPU reads, preprocesses and scores its own chunks (measured: splitting the CPUs
    # between preparing and predicting left the predicting half idle, 0.7x a plain loop on 2 CPUs).
    actors = actors or (max(1, int(gpus / gpus_per_actor)) if on_gpu else max(1, cpus))
    batch_size = batch_size or (GPU_BATCH if on_gpu else CPU_BATCH)
    log.info("Ray: %d CPUs, %g GPUs; up to %d %s actor(s), batch %d", cpus, gpus, actors,
             "Predictor (GPU)" if on_gpu else "read+preprocess+predict (CPU)", batch_size)

    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    actor_kwargs = {"model": model_uri, "version": version, "device": "cuda" if on_gpu else "cpu",
                    "batch_size": batch_size, "identifiers": identifiers, "tta": tta, "score_anyway": score_anyway}
    if on_gpu:
        prepared = dataset.map_batches(
            _prepare_batch,
            fn_kwargs={"config": preprocess_config, "identifiers": identifiers},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            memory=task_memory_gib * GIB,
        )
        scored = prepared.map_batches(
            _PredictorActor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=1,
            num_gpus=gpus_per_actor,
            compute=actor_pool(actors, len(chunks)),
        )
    else:
        scored = dataset.map_batches(
            _ChunkScorerActor,
            fn_constructor_kwargs=actor_kwargs,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            memory=task_memory_gib * GIB,
            compute=actor_pool(actors, len(chunks)),
        )
    for table in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        committer.add(table)


def _failed(out: str, paths: Sequence[str], identifiers: bool) -> set[str]:
    """Inputs whose committed result is a failure: what a re-run retries."""
    frame = read_results(out, paths, identifiers)
    return set(frame.loc[frame["error"].notna(), "path"])


def _summarize(out: str, listing: storage.Listing, *, fmt: str, identifiers: bool, version: str, seconds: float,
               skipped: int, scored_now: int, retried: int = 0, first_result: float | None = None,
               first_rows: int = 0) -> dict:
    paths, not_read = listing.paths, listing.skipped
    frame = read_results(out, paths, identifiers)
    counts = collections.Counter(outcome(row) for row in _records(frame))
    errors = collections.Counter(str(code) for code in frame["error_code"].dropna())
    reasons = collections.Counter(r for text in frame["reasons"].dropna() for r in str(text).split(","))
    results = write_results(out, frame, fmt)
    summary = {
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
        "skipped_already_done": skipped,  # had a result from an earlier run, not redone
        "retried_failed": retried,  # had failed in an earlier run, processed again in this one
        "processed_this_run": scored_now,  # result rows written by this run, whatever their outcome
        "seconds": round(seconds, 1),
        "images_per_second": round(scored_now / seconds, 2) if seconds > 0 else None,
        # start-up (Ray, the workers loading the networks) and the first chunk: how long until results flowed
        "seconds_to_first_result": None if first_result is None else round(first_result, 1),
        "files_in_first_result": first_rows,
        "model_version": version,
        "results": results,
        "out": out,
    }
    storage.write_bytes(f"{out.rstrip('/')}/summary.json", json.dumps(summary, indent=2).encode())
    return summary


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
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop commits like Ctrl-C
    try:
        summary = run(args.inputs, args.out, args.model, args.manifest, fmt=args.format, chunk_size=args.chunk_size,
                      batch_size=args.batch_size, commit_every=args.commit_every,
                      keep_identifiers=args.keep_identifiers, overwrite=args.overwrite, use_ray=not args.no_ray, gpus_per_actor=args.gpus_per_actor, actors=args.actors,
                      task_memory_gib=args.task_memory_gib, device=args.device, progress=not args.no_progress,
                      tta=args.tta, score_anyway=args.score_anyway, write_back=args.write_back,
                      secondary_capture=args.secondary_capture, sex=args.sex, retry_failed=args.retry_failed)
    except ArchiveError as exc:  # the archive is down or refuses us: what is scored is committed; no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_summary(summary)
    if summary["interrupted"]:
        return 130
    return 1 if summary["failed"] else 0  # as predict: 0 only when every input was scored or refused with a reason
