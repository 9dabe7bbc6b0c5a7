"""The resumable job skeleton on its own (no model, no Ray): claim, resume, commit, interruption, exit codes,
and options taken from the command line by name."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from boneage.errors import ExitCode, OutputConflictError, exit_code
from boneage.files.dicomweb import AccessRefused
from boneage.files.parts import chunk_id, commit, part_uri, plan_chunks, write_parquet
from boneage.jobs import resumable
from boneage.jobs.arguments import preprocess_arguments, score_arguments
from boneage.jobs.preprocess import PreprocessOptions
from boneage.jobs.resumable import ChunkJob, Output, Resources, RunFigures, Stage
from boneage.jobs.score import ScoreOptions

SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64())])


class SizeJob(ChunkJob):
    """A toy job: each file's size, committed by the driver; ``stop_after`` chunks, then a Ctrl-C."""

    log = logging.getLogger("boneage.test")
    verb, label, claims = "measure", "measuring", "sizes"
    parts, part_key = "parts", "part"
    chunk_size = 2
    commits_on_driver = True

    def __init__(self, output: Output, salt: str = "v1", stop_after: int | None = None):
        super().__init__(output, Resources(use_ray=False))
        self.salt, self.stop_after = salt, stop_after

    def identity(self) -> tuple[dict[str, tuple[str, object]], dict]:
        return {"salt": ("salt", self.salt)}, {}

    def plan(self, todo: list[str], chunk_size: int) -> list[dict]:
        return plan_chunks(todo, self.salt, chunk_size)

    def stages(self, cluster: dict[str, float]) -> list[Stage]:
        raise AssertionError("no Ray here")

    def local(self) -> Callable[[dict], pa.Table]:
        done = []

        def work(chunk: dict) -> pa.Table:
            if self.stop_after is not None and len(done) == self.stop_after:
                raise KeyboardInterrupt
            done.append(chunk)
            return pa.Table.from_pylist([{"path": p, "size": Path(p).stat().st_size} for p in chunk["paths"]],
                                        schema=SCHEMA)

        return work

    def commit(self, rows: list[dict]) -> None:
        paths = sorted(r["path"] for r in rows)
        cid = chunk_id(paths, self.salt)
        write_parquet(part_uri(self.out, self.parts, cid), rows, SCHEMA)
        commit(self.out, cid, {"chunk_id": cid, "part": part_uri(self.out, self.parts, cid), "paths": paths})

    def summarize(self, figures: RunFigures) -> dict:
        return {"inputs": len(figures.listing.paths), "failed": 0, **figures.as_summary(), "out": self.out}


@pytest.fixture
def files(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(i))
    return folder


def test_an_interrupted_run_commits_what_is_done_and_the_same_run_finishes(files, tmp_path):
    out = str(tmp_path / "out")
    seen = []
    stopped = resumable.run_job(SizeJob(Output(out, commit_every=1, callbacks=[seen.append]), stop_after=2),
                                [str(files)])
    assert stopped["interrupted"] and stopped["processed_this_run"] == 4 == sum(t.num_rows for t in seen)
    assert exit_code(stopped) == ExitCode.INTERRUPTED
    assert json.loads(Path(out, "summary.json").read_text())["interrupted"]
    Path(out, "parts", "part-torn.parquet").write_bytes(b"half")  # a write a kill cut short
    again = resumable.run_job(SizeJob(Output(out)), [str(files)])
    assert (again["skipped_already_done"], again["processed_this_run"], again["interrupted"]) == (4, 1, False)
    assert not Path(out, "parts", "part-torn.parquet").exists() and exit_code(again) == ExitCode.OK
    with pytest.raises(OutputConflictError, match="another salt"):
        resumable.run_job(SizeJob(Output(out), salt="v2"), [str(files)])
    assert resumable.run_job(SizeJob(Output(out, overwrite=True), salt="v2"), [str(files)])["processed_this_run"] == 5


def test_exit_codes_are_decided_in_one_place():
    assert exit_code(OutputConflictError("x")) == ExitCode.FAILED == 1  # what its SystemExit gave before
    assert exit_code(AccessRefused("archive")) == ExitCode.ARCHIVE == 3
    assert exit_code(FileNotFoundError("x")) == exit_code(ValueError("x")) == exit_code(OSError(28, "full")) == 2
    assert exit_code(RuntimeError("a bug")) is None  # raised, with its traceback
    assert exit_code({"failed": 2, "interrupted": False}) == 1
    assert exit_code({"failed": 2, "interrupted": False}, failures_fail=False) == 0  # a cache goes without them
    assert exit_code({"failed": 0, "interrupted": True}) == 130


def test_options_are_read_from_the_command_line_by_name():
    parser = argparse.ArgumentParser()
    score_arguments(parser)
    args = parser.parse_args(["in/", "--out", "s3://b/o", "--model", "m.pt", "--tta", "4", "--sex", "female",
                              "--no-retry-failed", "--format", "csv", "--chunk-size", "8", "--no-ray",
                              "--device", "cpu", "--commit-every", "5", "--no-progress"])
    assert resumable.from_args(ScoreOptions, args) == ScoreOptions(model="m.pt", tta=4, sex="F", retry_failed=False,
                                                                   format="csv")
    assert Resources.from_args(args) == Resources(use_ray=False, chunk_size=8, device="cpu")
    assert Output.from_args(args) == Output("s3://b/o", commit_every=5, progress=False)
    parser = argparse.ArgumentParser()
    preprocess_arguments(parser)
    args = parser.parse_args(["in/", "--out", "cache/", "--config", "hires", "--output-size", "128", "--actors", "3"])
    options = PreprocessOptions.from_args(args)
    assert options.config.output_size == 128 and options.labels is None
    assert Resources.from_args(args) == Resources(chunk_size=16, actors=3)
