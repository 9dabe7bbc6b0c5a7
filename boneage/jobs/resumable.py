"""The resumable job that ``boneage preprocess`` and ``boneage score`` both are: one skeleton, two users.

The skeleton lists the inputs, claims OUT (one OUT holds one configuration's results), resumes (parts
without a commit marker are removed; inputs a marker lists are done, unless the job retries them), cuts
the rest into chunks, runs them on a pool of Ray Data actors (or in a plain loop, ``--no-ray``), commits,
and writes the summary. A Ctrl-C or a SIGTERM commits what is done and returns a summary that says
``interrupted``; the same command finishes the rest. The commit protocol is ``boneage.files.parts``.

A job supplies what differs (:class:`ChunkJob`): what its OUT is claimed by, how a chunk is planned and
processed (its Ray Data stages), who commits (its workers, or the driver every ``commit_every`` rows), and
its summary. Options travel as three typed objects, as Ray bundles ``ScalingConfig`` and ``RunConfig``:
what to compute (the job's own), :class:`Output` and :class:`Resources`.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from boneage.errors import exit_code
from boneage.files import storage
from boneage.files.parts import claim_output, committed_markers, done_paths, remove_orphan_parts
from boneage.progress import Progress

GIB = 1024**3
COMMIT_SECONDS = 30.0  # a driver-side commit at least this often, however few rows came
T = TypeVar("T")


def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """A dataclass of options from the parsed command line: each field from the option of its name (an
    option the command lacks keeps the field's default). So a new option is a field and its flag."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in vars(args)}
    return cls(**{**given, **values})


@dataclass(frozen=True)
class Output:
    """Where a job writes and how it reports (as Ray's ``RunConfig``)."""

    uri: str
    overwrite: bool = False  # delete OUT and start again
    commit_every: int = 256  # rows per committed part, for a job whose driver commits
    progress: bool = True  # the progress line
    # called with each table of rows as it reaches the driver: a benchmark's instrumentation, from outside
    callbacks: Sequence[Callable[[pa.Table], None]] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Output:
        return from_args(cls, args, uri=args.out, progress=not getattr(args, "no_progress", False))


@dataclass(frozen=True)
class Resources:
    """What the work runs on (as Ray's ``ScalingConfig``); none of it changes a result."""

    use_ray: bool = True  # False: the same chunks in a plain loop in this process
    chunk_size: int | None = None  # files per chunk (the unit of work); None: the job's default
    actors: int | None = None  # most actors; None: the job's choice from the cluster's CPUs and GPUs
    gpus_per_actor: float | None = None  # None: the job's choice
    task_memory_gib: float = 1.5  # memory reserved per task that reads films
    batch_size: int | None = None  # films per model call (scoring); None: by device
    device: str | None = None  # the plain loop's device (scoring, --no-ray)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Resources:
        return from_args(cls, args, use_ray=not args.no_ray)


@dataclass(frozen=True)
class Stage:
    """One Ray Data ``map_batches`` step. ``udf`` is a class (a pool of at most ``actors`` actors, each
    constructed once with ``args``: a model loads once per actor) or a function (tasks, called with
    ``args``); it takes and returns ``pyarrow`` tables."""

    udf: Callable
    args: dict = field(default_factory=dict)
    batch_size: int = 1  # rows per call (the first stage's rows are chunks)
    gpus: float = 0.0
    memory_gib: float | None = None
    actors: int = 1


class ChunkWorker:
    """A Ray Data UDF over chunk descriptions: :meth:`chunk` gives one table of rows per chunk (one row
    per input file), and a batch of chunks gives them concatenated."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([self.chunk(chunk) for chunk in batch.to_pylist()])

    def chunk(self, chunk: dict) -> pa.Table:
        raise NotImplementedError


@dataclass(frozen=True)
class RunFigures:
    """What this run did, beside what OUT holds."""

    listing: storage.Listing
    already_done: int  # inputs with a result from an earlier run, not redone
    retried: int  # inputs that had failed in an earlier run, processed again
    processed: int  # rows this run committed
    seconds: float
    interrupted: bool = False

    def as_summary(self) -> dict:
        return {
            "skipped_already_done": self.already_done,
            "retried_failed": self.retried,
            "processed_this_run": self.processed,  # whatever their outcome
            "seconds": round(self.seconds, 1),
            "images_per_second": round(self.processed / self.seconds, 2) if self.seconds > 0 else None,
        }


class ChunkJob(abc.ABC):
    """What one resumable job supplies to :func:`run_job`."""

    log: logging.Logger
    verb: str  # "score": the log's "N to score"
    label: str  # "scoring": the progress line's
    claims: str  # what OUT holds, in the error for an OUT of another configuration ("results")
    parts: str  # OUT's folder of committed parts, and the marker's key naming its part
    part_key: str
    chunk_size: int  # files per chunk by default
    commits_on_driver: bool = False  # True: the driver commits the rows; False: each worker commits its chunk
    failures_fail: bool = True  # a failed input makes the exit status 1

    def __init__(self, output: Output, resources: Resources):
        self.output, self.resources = output, resources
        self.out = output.uri

    def start(self) -> None:  # noqa: B027 - optional: what must be loaded before OUT is claimed
        """Load what the run needs (a model, a manifest), once the inputs are listed."""

    @abc.abstractmethod
    def identity(self) -> tuple[dict[str, tuple[str, object]], dict]:
        """What OUT is claimed by (``claim_output``'s ``identity``) and what is recorded beside it."""

    def retry(self, paths: Sequence[str]) -> set[str]:
        """Inputs with a committed result to process again (scoring: the failed ones)."""
        return set()

    @abc.abstractmethod
    def plan(self, todo: list[str], chunk_size: int) -> list[dict]:
        """The chunks for ``todo`` (each with ``chunk_id`` and ``paths``)."""

    def ready(self, todo: list[str]) -> pa.Table | None:
        """Rows known without any work (scoring: a film whose manifest row is bad), committed first."""
        return None

    def describe(self) -> str:
        """Said after the plan, in brackets (scoring: the model's version)."""
        return ""

    @abc.abstractmethod
    def stages(self, cluster: dict[str, float]) -> list[Stage]:
        """The Ray Data pipeline over the chunks, given the cluster's resources (``ray.cluster_resources``)."""

    @abc.abstractmethod
    def local(self) -> Callable[[dict], pa.Table]:
        """The same work on one chunk in this process (``--no-ray``)."""

    def commit(self, rows: list[dict]) -> None:
        """Commit rows on the driver (only when ``commits_on_driver``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def summarize(self, figures: RunFigures) -> dict:
        """The summary: what OUT holds for these inputs, with ``figures.as_summary()``; ends with ``out``."""

    def finish(self, summary: dict, figures: RunFigures) -> None:  # noqa: B027 - optional
        """After the summary is written (scoring: write-back; preprocessing: the sample grid)."""


class _Sink:
    """The driver's side: counts the rows as they arrive and, when the driver commits, buffers them and
    commits every ``commit_every`` rows (or every ``COMMIT_SECONDS``)."""

    def __init__(self, job: ChunkJob, progress: Progress):
        self.job, self.progress = job, progress
        self.rows: list[dict] = []
        self.committed = 0
        self._last = time.monotonic()

    def add(self, table: pa.Table) -> None:
        for callback in self.job.output.callbacks:
            callback(table)
        self.progress.update(table.num_rows)
        if not self.job.commits_on_driver:  # a worker committed its chunk before the rows came
            self.committed += table.num_rows
            return
        self.rows.extend(table.to_pylist())
        if len(self.rows) >= self.job.output.commit_every or time.monotonic() - self._last >= COMMIT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.job.commit(self.rows)
            self.committed += len(self.rows)
            self.rows = []
        self._last = time.monotonic()


def run_job(job: ChunkJob, inputs: Sequence[str]) -> dict:
    """Run ``job`` over ``inputs`` into its OUT; returns the summary (also written to OUT/summary.json)."""
    started = time.perf_counter()
    listing = storage.scan_inputs(inputs)
    paths = listing.paths
    job.start()
    identity, record = job.identity()
    claim_output(job.out, identity, job.output.overwrite, job.claims, record=record)

    markers = committed_markers(job.out)
    remove_orphan_parts(job.out, job.parts, markers, key=job.part_key)
    done = done_paths(markers)
    retried = job.retry(paths) if markers else set()
    todo = [p for p in paths if p not in done or p in retried]
    chunk_size = job.resources.chunk_size or job.chunk_size
    ready = job.ready(todo)
    chunks = job.plan(todo, chunk_size)
    described = job.describe()
    job.log.info("%d inputs: %d already done, %d to %s in %d chunks of up to %d%s", len(paths),
                 len(paths) - len(todo), len(todo), job.verb, len(chunks), chunk_size,
                 f" ({described})" if described else "")
    if listing.skipped:
        job.log.warning("%d entries skipped, not read (%s); listed in summary.json", len(listing.skipped),
                        ", ".join(f"{r} {n}" for r, n in listing.by_reason().items()))

    bar = Progress(len(todo), job.label, enabled=job.output.progress)
    sink = _Sink(job, bar)
    interrupted = False
    try:
        if ready is not None and ready.num_rows:
            sink.add(ready)
        for table in _on_ray(job, chunks) if chunks and job.resources.use_ray else _in_loop(job, chunks):
            sink.add(table)
    except KeyboardInterrupt:
        interrupted = True
        job.log.warning("interrupted: committing what is done; re-run the same command to finish")
    finally:
        sink.flush()
        bar.close()
    figures = RunFigures(listing, len(paths) - len(todo), len(retried), sink.committed,
                         time.perf_counter() - started, interrupted)
    summary = {**job.summarize(figures), "interrupted": interrupted}
    storage.write_bytes(f"{job.out.rstrip('/')}/summary.json", json.dumps(summary, indent=2).encode())
    job.finish(summary, figures)
    return summary


def _in_loop(job: ChunkJob, chunks: list[dict]) -> Iterator[pa.Table]:
    if chunks:
        work = job.local()
        for chunk in chunks:
            yield work(chunk)


def _on_ray(job: ChunkJob, chunks: list[dict]) -> Iterator[pa.Table]:
    """The chunks through the job's stages on Ray Data; the rows stream back as each batch is done."""
    from boneage.raycluster import actor_pool, ensure_ray

    ray = ensure_ray()
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    for stage in job.stages(ray.cluster_resources()):
        options: dict[str, Any] = {"batch_size": stage.batch_size, "batch_format": "pyarrow", "num_cpus": 1,
                                   "num_gpus": stage.gpus}
        if stage.memory_gib:
            options["memory"] = stage.memory_gib * GIB
        if isinstance(stage.udf, type):
            dataset = dataset.map_batches(stage.udf, fn_constructor_kwargs=stage.args,
                                          compute=actor_pool(stage.actors, len(chunks)), **options)
        else:
            dataset = dataset.map_batches(stage.udf, fn_kwargs=stage.args, **options)
    yield from dataset.iter_batches(batch_format="pyarrow", batch_size=None)


# --- the command's side: one way in, whichever job -------------------------------------------------


def run_command(run: Callable[[], dict], print_summary: Callable[[dict], None], failures_fail: bool = True) -> int:
    """Run a job for its command, print its summary, and return its exit status. A scheduler's SIGTERM
    commits like a Ctrl-C (``boneage.raycluster.ensure_ray`` keeps this handler)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    print_summary(summary)
    return exit_code(summary, failures_fail=failures_fail)


