"""The preprocessed training cache: Parquet shards of 384x384 images with labels, plus what was left out.

Plain functions, no Ray: writing a chunk is :func:`boneage.prepare.cache_chunks.process_chunk`, which the
Ray Data job (``boneage/jobs/preprocess.py``) maps over chunks of files; reading is here.

Layout under OUT (any fsspec URI):

- ``kept/part-<chunk>.parquet``: one row per usable image (``id``, ``path``, ``boneage``, ``male``,
  ``image`` = raw uint8 bytes of ``image_size``², ``contrast``, ``hand_fraction``, ``config_hash``);
- ``_done/<chunk>.json``: the commit marker of a chunk, written last; it lists the chunk's files,
  its kept shard, its rejected and failed rows and, on Ray, the node that ran it. A shard without a marker is an interrupted
  write and is never read (the protocol is ``boneage.files.parts``, shared with bulk scoring);
- ``refused.csv`` (``id``, ``path``, ``reason``: the film's reasons, refusals first, ``detail``) and ``failed.csv`` (``id``, ``path``,
  ``error``): consolidated from the markers at the end of each run; ``summary.json``; ``_config.json``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from boneage.errors import BoneAgeError
from boneage.files import storage
from boneage.files.images import parse_sex
from boneage.files.parts import (
    DONE,
    chunk_id,
    committed_markers,
    plan_chunks,
    remove_orphan_parts,
)

KEPT = "kept"
__all__ = ["CACHE_SCHEMA", "DONE", "KEPT", "Label", "chunk_id", "committed_markers", "plan_chunks", "read_cache",
           "read_labels", "remove_orphan_shards", "row_image", "cache_shards"]
CACHE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("boneage", pa.float64()),
        ("male", pa.bool_()),
        ("image", pa.binary()),
        ("image_size", pa.int32()),
        ("contrast", pa.float32()),
        ("hand_fraction", pa.float32()),
        ("config_hash", pa.string()),
    ]
)


@dataclass
class Label:
    boneage: float | None
    male: bool | None


def read_labels(uri: str) -> dict[str, Label]:
    """RSNA CSV (``id,boneage,male``; ids are file stems) -> labels by id."""
    with fsspec.open(uri, "rt") as f:
        frame = pd.read_csv(f, dtype={"id": str})
    missing = {"id", "boneage", "male"} - set(frame.columns)
    if missing:
        raise ValueError(f"{uri}: labels need columns id,boneage,male; missing {sorted(missing)}")
    male = frame["male"].map(lambda v: None if pd.isna(v) else parse_sex(v) == "M")
    return {i: Label(float(b), m) for i, b, m in zip(frame["id"], frame["boneage"], male, strict=True)}


def remove_orphan_shards(out: str, markers: Iterable[dict]) -> list[str]:
    """Delete shards left by chunks that crashed before their marker was written."""
    return remove_orphan_parts(out, KEPT, markers, key="shard")


def cache_shards(out: str) -> list[str]:
    """URIs of the committed kept shards: what training should read (e.g. ``ray.data.read_parquet``)."""
    return [m["shard"] for m in committed_markers(out) if m.get("shard")]


def read_cache(out: str) -> pd.DataFrame:
    """All committed kept rows as one DataFrame (small caches, tests, inspection)."""
    frames = [pd.read_parquet(io.BytesIO(storage.read_bytes(uri))) for uri in cache_shards(out)]
    if not frames:
        return pd.DataFrame(columns=CACHE_SCHEMA.names)
    return pd.concat(frames, ignore_index=True).sort_values("id", kind="stable").reset_index(drop=True)


def row_image(row) -> np.ndarray:
    """The cached uint8 image of one row, as the model's preprocessing produced it."""
    size = int(row["image_size"])
    return np.frombuffer(row["image"], dtype=np.uint8).reshape(size, size)


@dataclass(frozen=True)
class LabelledImages:
    """The labelled rows of a cache as arrays: what evaluation, calibration and training loops read."""

    ids: list[str]
    images: np.ndarray  # N x S x S uint8
    boneage: np.ndarray  # months, float64
    male: np.ndarray  # 1.0 male, 0.0 female


def labelled_images(cache_uri: str, keep: Callable[[str], bool] | None = None, config_hash: str | None = None,
                    purpose: str = "use") -> LabelledImages:
    """Rows with bone age and sex (only the ids ``keep`` accepts, when given). With ``config_hash``,
    every row must have been preprocessed with that config: a model fed images made another way
    scores garbage, so a mismatch is an error rather than a silent figure. ``purpose`` names the
    caller's job in the error for an empty selection."""
    frame = read_cache(cache_uri)
    frame = frame[frame["boneage"].notna() & frame["male"].notna()]
    if keep is not None:
        frame = frame[[keep(str(i)) for i in frame["id"]]]
    if frame.empty:
        split = "" if keep is None else " (after the split)"
        raise BoneAgeError(f"{cache_uri} holds no labelled images to {purpose}{split}")
    found = set(frame["config_hash"])
    if config_hash is not None and found != {config_hash}:
        raise BoneAgeError(f"{cache_uri} was preprocessed with config {sorted(found)}, but the model expects "
                           f"{config_hash}; rebuild the cache with the model's preprocessing config")
    return LabelledImages(ids=[str(i) for i in frame["id"]],
                          images=np.stack([row_image(row) for _, row in frame.iterrows()]),
                          boneage=frame["boneage"].astype(float).to_numpy(),
                          male=frame["male"].astype(float).to_numpy())
