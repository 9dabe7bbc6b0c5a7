"""Bulk scoring of an archive: plain functions, no Ray, over the one prediction path (``Predictor``).

The Ray Data job (``boneage/jobs/score.py``) runs :func:`prepare_chunk` on CPU workers and
:func:`predict_table` in a pool of ``Predictor`` actors; a single-process loop calls
:func:`score_chunk`, which is those two in a row. Results are committed with the protocol of
``boneage.files.parts`` (shared with the preprocessing job), so a re-run after a crash scores only the
files without a result and never loses or duplicates one.

Layout under OUT (any fsspec URI):

- ``parts/part-<id>.parquet``: result rows, one per input (columns :data:`RESULT_SCHEMA`);
- ``_done/<id>.json``: the marker committing a part (its inputs and outcome counts), written last;
- ``results.parquet`` (or ``results.csv``): every committed row for this run's inputs, rebuilt from
  the parts at the end of each run; ``summary.json``; ``_config.json`` (model version).
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.files import storage
from boneage.files.images import IDENTIFIER_FIELDS
from boneage.files.parts import chunk_id, commit, committed_markers, part_uri, plan_chunks, write_parquet
from boneage.predict.predictor import Predictor, prepare_file
from boneage.predict.result import Prediction, PreparedFilm, Quality, Verdict, output_fields, plain_type
from boneage.prepare.stages import PreprocessConfig

PARTS = "parts"
# Arrow types of the result's field types (boneage.predict.result); an enum is stored as its text.
_ARROW_TYPES = {float: pa.float64(), str: pa.string(), bool: pa.bool_(), int: pa.int32()}


def columns(model: type[BaseModel]) -> list[tuple[str, pa.DataType]]:
    """One column per output field of ``model``, in its order; a nested record (``quality``) is flattened
    into its own fields' columns."""
    out = []
    for name, info in output_fields(model).items():
        kind = plain_type(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.extend(columns(kind))
        else:
            out.append((name, pa.string() if issubclass(kind, StrEnum) else _ARROW_TYPES[kind]))
    return out


def arrow_schema(result: type[Prediction] = Prediction) -> pa.Schema:
    """The Parquet schema of a result type."""
    return pa.schema(columns(result), metadata={"notice": RESEARCH_USE_ONLY})  # in every Parquet file's footer


RESULT_SCHEMA = arrow_schema()
# The film's verdict (boneage.prepare.verdict) and the measures behind it, one column each.
QUALITY_FIELDS = tuple(name for name, _ in columns(Quality))
IDENTIFIER_SCHEMA = pa.schema([(name, pa.string()) for name in IDENTIFIER_FIELDS])
IMAGE_SCHEMA = pa.schema([("image", pa.binary()), ("image_size", pa.int32())])


def result_schema(identifiers: bool = False, result: type[Prediction] = Prediction) -> pa.Schema:
    """The output columns; patient identifiers only with ``--keep-identifiers``."""
    schema = RESULT_SCHEMA if result is Prediction else arrow_schema(result)
    return pa.unify_schemas([schema, IDENTIFIER_SCHEMA]) if identifiers else schema


def prepared_schema(identifiers: bool = False) -> pa.Schema:
    """Rows between the CPU stage and the model: the result columns plus the model input image."""
    return pa.unify_schemas([result_schema(identifiers), IMAGE_SCHEMA])


@dataclass
class ManifestEntry:
    sex: str | None = None
    chronological_age_months: float | None = None


def manifest_key(path: str) -> str:
    """How manifest paths are matched to inputs: local paths made absolute, URLs as written."""
    path = path.removeprefix("file://")
    return path if "://" in path else os.path.abspath(path)


def plan(paths: Sequence[str], manifest: dict[str, ManifestEntry], salt: str, chunk_size: int,
         default_sex: str | None = None) -> list[dict]:
    """Chunks of inputs, each carrying its files' manifest sex ("" = unknown) and age (NaN = unknown),
    so workers never need the whole manifest, and the sex for files that nothing else gives one."""
    chunks = plan_chunks(paths, salt, chunk_size)
    for chunk in chunks:
        chunk["default_sex"] = default_sex or ""
        entries = [manifest.get(manifest_key(p), ManifestEntry()) for p in chunk["paths"]]
        chunk["sexes"] = [e.sex or "" for e in entries]
        chunk["ages"] = [math.nan if e.chronological_age_months is None else e.chronological_age_months
                         for e in entries]
    return chunks


def to_row(prediction: Prediction | PreparedFilm, identifiers: bool = False, with_image: bool = False) -> dict:
    """A flat row of :func:`result_schema` (plus the model input with ``with_image``); a prepared film is the
    row of a result not scored yet."""
    if isinstance(prediction, PreparedFilm):
        prediction = prediction.result(keep_image=True)
    data = prediction.model_dump(mode="json")
    row = {}
    for name in output_fields(type(prediction)):
        value = data[name]
        if name == "quality":
            row.update({key: (value or {}).get(key) for key in QUALITY_FIELDS})
        else:
            row[name] = value
    if identifiers:
        row.update({key: prediction.extra.get(key) for key in IDENTIFIER_FIELDS})
    if with_image:
        image = prediction.preprocessed
        row["image"] = None if image is None else image.tobytes()
        row["image_size"] = None if image is None else image.shape[0]
    return row


def from_row(row: dict) -> PreparedFilm:
    """Inverse of :func:`to_row` for a prepared row: the film, for the model."""
    quality = (Quality(**{key: row[key] for key in QUALITY_FIELDS if row.get(key) is not None})
               if row.get("contrast") is not None else None)
    image = None
    if row.get("image") is not None:
        size = int(row["image_size"])
        image = np.frombuffer(row["image"], dtype=np.uint8).reshape(size, size)
    return PreparedFilm(path=row["path"], id=row["id"], sex=row["sex"], quality=quality, error=row["error"],
                        error_code=row["error_code"], chronological_age_months=row["chronological_age_months"],
                        identifiers={key: row[key] for key in IDENTIFIER_FIELDS if key in row}, image=image)


def prepare_chunk(chunk: dict, config: PreprocessConfig, identifiers: bool = False) -> pa.Table:
    """Read and preprocess a chunk's files (the CPU half); a file that cannot be read is a row with an error."""
    rows = []
    for path, sex, age in zip(chunk["paths"], chunk["sexes"], chunk["ages"], strict=True):
        age = None if age is None or math.isnan(age) else float(age)
        film = prepare_file(path, config, sex or None, age, identifiers=identifiers,
                            default_sex=chunk.get("default_sex") or None)
        rows.append(to_row(film, identifiers, with_image=True))
    return pa.Table.from_pylist(rows, schema=prepared_schema(identifiers))


def predict_table(predictor: Predictor, prepared: pa.Table, identifiers: bool = False) -> pa.Table:
    """The model half: prepared rows in, result rows out (same order, images dropped)."""
    predictions = predictor.predict_prepared([from_row(row) for row in prepared.to_pylist()])
    return pa.Table.from_pylist([to_row(p, identifiers) for p in predictions], schema=result_schema(identifiers))


def score_chunk(predictor: Predictor, chunk: dict, identifiers: bool = False) -> pa.Table:
    """Both halves in one process: what ``--no-ray`` and the benchmark's loop run."""
    return predict_table(predictor, prepare_chunk(chunk, predictor.preprocess_config, identifiers), identifiers)


def outcome(row: dict) -> str:
    """"failed" (could not be read or prepared), "refused" (the verdict refused the film: not a hand,
    no hand found; its bone age is withheld unless scored anyway) or "scored" (warnings included)."""
    if row.get("error") is not None:
        return "failed"
    return "refused" if row.get("verdict") == Verdict.REFUSED else "scored"


def commit_results(out: str, rows: list[dict], salt: str, identifiers: bool = False) -> dict:
    """Write one part of result rows, then its marker; returns the marker."""
    paths = sorted(row["path"] for row in rows)
    cid = chunk_id(paths, salt)
    part = part_uri(out, PARTS, cid)
    write_parquet(part, rows, result_schema(identifiers))
    counts = {"scored": 0, "refused": 0, "failed": 0}
    for row in rows:
        counts[outcome(row)] += 1
    marker = {"chunk_id": cid, "part": part, "paths": paths, "counts": counts, "committed_at": time.time()}
    commit(out, cid, marker)
    return marker


def read_results(out: str, paths: Iterable[str] | None = None, identifiers: bool = False) -> pd.DataFrame:
    """Committed result rows (only for ``paths`` when given), one per input, sorted by path."""
    # oldest commit first: a file scored again (a retried failure) has its newest row kept below
    markers = sorted(committed_markers(out), key=lambda m: m.get("committed_at", 0.0))
    frames = [pq.read_table(io.BytesIO(storage.read_bytes(m["part"]))).to_pandas() for m in markers if m.get("part")]
    columns = result_schema(identifiers).names
    if not frames:
        return pd.DataFrame(columns=columns)
    # reindex: parts written before a column was added read as nulls in it, not as an error
    frame = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    if paths is not None:
        frame = frame[frame["path"].isin(set(paths))]
    # One row per input: the newest (a failed file that a re-run scored again has two).
    frame = frame.drop_duplicates("path", keep="last")
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def write_results(out: str, frame: pd.DataFrame, fmt: str = "parquet") -> str:
    """The consolidated table, as ``OUT/results.parquet`` or ``OUT/results.csv``."""
    uri = f"{out.rstrip('/')}/results.{fmt}"
    if fmt == "csv":
        storage.write_bytes(uri, frame.to_csv(index=False).encode())
    elif fmt == "parquet":
        schema = result_schema(set(IDENTIFIER_FIELDS) <= set(frame.columns))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), buf, compression="zstd")
        storage.write_bytes(uri, buf.getvalue())
    else:
        raise ValueError(f"format must be parquet or csv, got {fmt!r}")
    return uri
