"""Training data from the cache, as plain functions: the held-out split by id, labels without the images,
the cache's config, and the Ray Data UDFs that decode rows and repeat them by category weight
(``boneage.jobs.train`` wires them)."""

from __future__ import annotations

import hashlib
import json

import fsspec
import numpy as np

from boneage.files import storage


def cache_labels(cache_uri: str) -> dict[str, tuple[float, bool]]:
    """{id: (bone age, male)} of the labelled rows, read without the image column."""
    import pyarrow.parquet as pq

    from boneage.files.cache import cache_shards

    labels = {}
    for shard in cache_shards(cache_uri):
        with fsspec.open(shard, "rb") as f:
            table = pq.read_table(f, columns=["id", "boneage", "male"])
        for ident, age, male in zip(*(table.column(c).to_pylist() for c in ("id", "boneage", "male")), strict=True):
            if age is not None and age == age and male is not None:
                labels[str(ident)] = (float(age), bool(male))
    return labels


def cache_preprocess_config(cache_uri: str) -> dict:
    """The preprocessing config the cache was built with: it goes into every checkpoint."""
    return json.loads(storage.read_bytes(f"{cache_uri.rstrip('/')}/_config.json"))["config"]


def to_arrays(batch: dict, keep_ids: set[str] | None = None) -> dict:
    """Ray Data UDF: raw cached image bytes -> uint8 arrays with their ids; rows without bone age or sex,
    or (with ``keep_ids``) of other ids, dropped."""
    keep = np.array([age is not None and age == age and male is not None and (keep_ids is None or str(i) in keep_ids)
                     for i, age, male in zip(batch["id"], batch["boneage"], batch["male"], strict=True)], dtype=bool)
    sizes = np.asarray(batch["image_size"])[keep]
    raw = [b for b, k in zip(batch["image"], keep, strict=True) if k]
    images = np.stack([np.frombuffer(b, np.uint8).reshape(int(n), int(n)) for b, n in zip(raw, sizes, strict=True)]
                      ) if raw else np.zeros((0, 1, 1), np.uint8)
    return {
        "id": np.asarray([str(i) for i in batch["id"]], dtype=object)[keep],
        "image": images,
        "male": np.array([float(bool(m)) for m, k in zip(batch["male"], keep, strict=True) if k], np.float32),
        "boneage": np.asarray(batch["boneage"], dtype=np.float32)[keep],
    }


def repeat_rows(batch: dict, repeats: dict[str, float] | None = None) -> dict:
    """Ray Data UDF on decoded rows: drop the ids (tensors only from here on) and, with ``repeats`` (the
    train set), repeat each row a random number of times whose expectation is the weighted sampler's.
    Ray runs this anew every epoch, so each epoch draws its own repeats."""
    from boneage.train.weighting import draw_repeats

    index = np.arange(len(batch["id"]))
    if repeats is not None:
        expected = np.array([repeats.get(str(i), 0.0) for i in batch["id"]])
        index = np.repeat(index, draw_repeats(expected, np.random.default_rng()))
    return {key: batch[key][index] for key in ("image", "male", "boneage")}


def read_ids(uri: str) -> list[str]:
    """The ``id`` column of a CSV (an RSNA label file, say)."""
    import pandas as pd

    with fsspec.open(uri, "rt") as f:
        return pd.read_csv(f, dtype={"id": str})["id"].tolist()


def in_validation(ident: str, fraction: float) -> bool:
    """Whether ``ident`` is in the held-out ``fraction``: a stable hash of the id, not a random draw, so the
    same image falls on the same side in every run, on every machine, and a model's held-out figures can
    be recomputed later (``boneage evaluate --val-fraction``)."""
    return int(hashlib.sha256(str(ident).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction
