"""The scoring job's manifest (``path,sex[,chronological_age_months]``), read row by row.

One bad row must not abort an archive's run, nor pass silently: a row whose sex or age cannot be read,
and a file given twice with different values (a different sex moves the bone age by about ten months),
make that file a ``bad_input`` row naming the manifest's line(s) and the path. Line numbers are the
CSV file's, its header being line 1, as a spreadsheet shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import fsspec
import pandas as pd
import pyarrow as pa

from boneage.files.images import parse_sex
from boneage.files.storage import file_id
from boneage.predict.predictor import Prediction
from boneage.predict.scoring import ManifestEntry, manifest_key, result_schema, to_row

log = logging.getLogger("boneage.score")
COLUMNS = "path,sex[,chronological_age_months]"


@dataclass
class Manifest:
    """Usable entries by :func:`~boneage.predict.scoring.manifest_key`, and why other files' rows are not."""

    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)  # where each file's rows are


def read_manifest(uri: str) -> Manifest:
    """Every row of the CSV at ``uri``; a whole file that is not a manifest raises ValueError naming it."""
    with fsspec.open(uri, "rt") as f:
        frame = pd.read_csv(f, dtype=str).fillna("")  # an empty cell (or NA) gives nothing, as before
    missing = {"path", "sex"} - set(frame.columns)
    if missing:
        raise ValueError(f"{uri}: a manifest needs columns {COLUMNS}; missing {sorted(missing)}")
    ages = frame["chronological_age_months"] if "chronological_age_months" in frame else [""] * len(frame)
    manifest = Manifest()
    for line, (path, sex, age) in enumerate(zip(frame["path"], frame["sex"], ages, strict=True), start=2):
        _add_row(manifest, uri, line, path.strip(), sex, age)
    return manifest


def _add_row(manifest: Manifest, uri: str, line: int, path: str, sex: str, age: str) -> None:
    """One row into ``manifest``: its entry, or the problem that makes its file a ``bad_input`` row."""
    if not path:
        log.warning("%s line %d: no path; the row is ignored", uri, line)
        return
    key = manifest_key(path)
    manifest.lines.setdefault(key, []).append(line)
    try:
        entry = ManifestEntry(parse_sex(sex), float(age) if age.strip() else None)
    except ValueError as exc:
        manifest.problems.setdefault(key, f"manifest {uri} line {line} (path {path}): {_why(exc)}")
        return
    manifest.entries[key] = _merge(manifest.entries.get(key), entry, manifest, uri, path, key)


def _why(exc: ValueError) -> str:
    text = str(exc)
    return text if text.startswith("sex") else f"chronological_age_months must be a number ({text})"


def _merge(old: ManifestEntry | None, new: ManifestEntry, manifest: Manifest, uri: str, path: str,
           key: str) -> ManifestEntry:
    """A file's rows agree or are refused: a value given twice must be the same (an empty one says nothing)."""
    if old is None:
        return new
    for name in ("sex", "chronological_age_months"):
        first, second = getattr(old, name), getattr(new, name)
        if first is not None and second is not None and first != second:
            lines = ", ".join(str(n) for n in manifest.lines[key])
            manifest.problems.setdefault(key, f"manifest {uri} lines {lines} give {path} contradictory {name} "
                                              f"({first}, {second}): correct the manifest")
    return ManifestEntry(old.sex or new.sex, old.chronological_age_months if old.chronological_age_months is not None
                         else new.chronological_age_months)


def refused_rows(paths: Sequence[str], manifest: Manifest, version: str, identifiers: bool) -> pa.Table:
    """A ``bad_input`` result row for each of ``paths`` whose manifest rows are refused."""
    rows = [to_row(Prediction(path=p, id=file_id(p), model_version=version, error=manifest.problems[manifest_key(p)],
                              error_code="bad_input"), identifiers) for p in paths]
    return pa.Table.from_pylist(rows, schema=result_schema(identifiers))
