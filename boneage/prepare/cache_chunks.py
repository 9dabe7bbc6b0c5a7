"""Preprocessing a chunk of an archive into the training cache (``boneage.files.cache``): the plain function
the Ray Data job (``boneage/jobs/preprocess.py``) maps over chunks, and a single-process loop can call too.

The verdict's rule (``boneage.prepare.verdict``) decides: refused films go to the chunk's rejected rows
with their reasons, everything else is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from boneage.errors import ImageReadError
from boneage.files.cache import CACHE_SCHEMA, KEPT, Label
from boneage.files.images import read_image
from boneage.files.parts import commit, part_uri, write_parquet
from boneage.files.storage import file_id
from boneage.prepare.stages import PreprocessConfig, preprocess


@dataclass
class ChunkResult:
    chunk_id: str
    paths: list[str]
    kept: int = 0
    rejected: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def process_file(path: str, label: Label | None, config: PreprocessConfig) -> tuple[str, dict]:
    """One file -> ("kept" | "rejected" | "failed", row). Never raises for a bad file."""
    ident = file_id(path)
    try:
        rad = read_image(path, min_side=config.decode_min_side)
        result = preprocess(rad.pixels, config)
    except ImageReadError as exc:
        return "failed", {"id": ident, "path": path, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bug on one file must not lose the chunk
        return "failed", {"id": ident, "path": path, "error": f"{type(exc).__name__}: {exc}"}
    if result.refused:  # the verdict's rule (boneage.prepare.verdict): what scoring refuses, training never sees
        quality = result.quality_flags()
        return "rejected", {"id": ident, "path": path, "reason": quality["reasons"], "detail": quality["detail"]}
    male = label.male if label and label.male is not None else (None if rad.sex is None else rad.sex == "M")
    return "kept", {
        "id": ident,
        "path": path,
        "boneage": label.boneage if label else None,
        "male": male,
        "image": result.image.tobytes(),
        "image_size": result.image.shape[0],
        "contrast": result.contrast,
        "hand_fraction": result.hand_fraction,
        "config_hash": result.config_hash,
    }


def process_chunk(
    cid: str, paths: Sequence[str], labels: dict[str, Label], out: str, config: PreprocessConfig,
    node: str | None = None,
) -> ChunkResult:
    """Process and commit one chunk: shard first, marker last, each written atomically. ``node``: where
    it ran (a Ray node id), kept in the marker, so a chunk from a bad node can be traced."""
    result = ChunkResult(chunk_id=cid, paths=list(paths))
    kept_rows = []
    for path in paths:
        status, row = process_file(path, labels.get(file_id(path)), config)
        if status == "kept":
            kept_rows.append(row)
        else:
            getattr(result, status).append(row)
    result.kept = len(kept_rows)
    shard = None
    if kept_rows:
        shard = part_uri(out, KEPT, cid)
        write_parquet(shard, kept_rows, CACHE_SCHEMA)
    commit(out, cid, {"chunk_id": cid, "config_hash": config.config_hash(), "paths": result.paths,
                      "kept": result.kept, "shard": shard, "rejected": result.rejected, "failed": result.failed,
                      **({"node": node} if node else {})})
    return result
