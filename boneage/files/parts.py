"""The commit protocol shared by the Ray Data jobs (preprocess, score): a part first, its marker last.

A job's output folder (any fsspec URI) holds Parquet parts and, under ``_done/``, one JSON marker
per committed part, written only after the part. Readers trust only parts that a marker names, so
a crash or a Ctrl-C mid-write never shows up as data; a re-run redoes exactly the inputs that no
marker lists, and deletes the parts left without a marker. Every write is atomic
(:func:`boneage.files.storage.write_bytes`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from boneage.errors import OutputConflictError
from boneage.files import storage

log = logging.getLogger(__name__)
DONE = "_done"
CONFIG = "_config.json"


def chunk_id(paths: Sequence[str], salt: str) -> str:
    """Deterministic id of a group of inputs: the same files under the same config give the same id,
    so a retried write replaces its own part instead of adding a second one."""
    return hashlib.sha256((salt + "\n" + "\n".join(paths)).encode()).hexdigest()[:16]


def plan_chunks(paths: Sequence[str], salt: str, chunk_size: int) -> list[dict]:
    """Group files into chunks: the unit of work (and, for preprocessing, of commit and resumption)."""
    chunks = []
    for start in range(0, len(paths), chunk_size):
        group = list(paths[start : start + chunk_size])
        chunks.append({"chunk_id": chunk_id(group, salt), "paths": group})
    return chunks


def marker_uri(out: str, cid: str) -> str:
    return f"{out.rstrip('/')}/{DONE}/{cid}.json"


def part_uri(out: str, folder: str, cid: str) -> str:
    return f"{out.rstrip('/')}/{folder}/part-{cid}.parquet"


def write_parquet(uri: str, rows: list[dict], schema: pa.Schema) -> None:
    """One part, written whole or not at all."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def commit(out: str, cid: str, marker: dict) -> None:
    """Publish a chunk: call only after its part is written. ``marker["paths"]`` lists its inputs."""
    storage.write_bytes(marker_uri(out, cid), json.dumps(marker).encode())


def committed_markers(out: str) -> list[dict]:
    """Markers of the finished chunks (a chunk without one never finished)."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/") + "/" + DONE)
    if not fs.exists(root):
        return []
    fs.invalidate_cache()
    return [json.loads(fs.cat_file(p)) for p in sorted(fs.find(root)) if p.endswith(".json")]


def done_paths(markers: Iterable[dict]) -> set[str]:
    """Inputs that already have a committed result: what a re-run skips."""
    return {p for m in markers for p in m["paths"]}


def remove_orphan_parts(out: str, folder: str, markers: Iterable[dict], key: str) -> list[str]:
    """Delete parts under ``OUT/folder`` that no marker names (``marker[key]``): interrupted writes."""
    fs, root = fsspec.core.url_to_fs(out.rstrip("/") + "/" + folder)
    if not fs.exists(root):
        return []
    fs.invalidate_cache()
    wanted = {fsspec.core.url_to_fs(m[key])[1] for m in markers if m.get(key)}
    orphans = [p for p in fs.find(root) if p not in wanted]
    for path in orphans:
        fs.rm(path)
    if orphans:
        log.warning("removed %d part(s) without a commit marker in %s/%s (an interrupted run)", len(orphans),
                    out.rstrip("/"), folder)
    return orphans


def claim_output(out: str, identity: dict[str, tuple[str, object]], overwrite: bool, what: str,
                 record: dict | None = None) -> None:
    """One OUT holds results of one configuration: resuming into an OUT made with another would mix them.

    ``identity`` maps a key of ``OUT/_config.json`` to (what to call it in the error, its value);
    ``record`` is stored beside it for people to read. ``overwrite`` deletes OUT and starts afresh.
    """
    fs, root = fsspec.core.url_to_fs(out)
    config_uri = f"{out.rstrip('/')}/{CONFIG}"
    if overwrite and fs.exists(root):
        fs.rm(root, recursive=True)
        log.info("--overwrite: removed the previous contents of %s", out)
    elif fs.exists(fsspec.core.url_to_fs(config_uri)[1]):
        previous = json.loads(storage.read_bytes(config_uri))
        for key, (label, value) in identity.items():
            if previous.get(key) != value:
                raise OutputConflictError(f"{out} holds {what} made with another {label} ({previous.get(key)} != "
                                          f"{value}); use a new --out or --overwrite")
    storage.remove_stale_tmp(out)  # temporary files of writes a killed run left (its parts: remove_orphan_parts)
    values = {key: value for key, (_, value) in identity.items()}
    storage.write_bytes(config_uri, json.dumps({**values, **(record or {})}, indent=2).encode())
