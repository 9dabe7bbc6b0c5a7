"""Results back into the archive: each scored DICOMweb film gets its Structured Report in its own study.

Runs after scoring, from the committed results, so it is resumable like scoring: a report already in
the archive (same film, same model version: the same SOP Instance UID) is not stored again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

from boneage.files import dicomweb
from boneage.predict.structured_report import build_report, report_uid
from boneage.progress import Progress

log = logging.getLogger(__name__)


def write_back(rows: Iterable[Mapping], progress: bool = True) -> dict:
    """Store the SR of every scored or refused row read from a DICOMweb archive; returns the counts
    (``stored``, ``already_there``, ``not_from_dicomweb``, ``failed_rows``)."""
    rows = list(rows)
    counts: Counter[str] = Counter()
    bar = Progress(len(rows), "writing reports back", enabled=progress)
    try:
        for row in rows:
            bar.update(1)
            uri = str(row.get("path") or "")
            if not (dicomweb.is_dicomweb(uri) and dicomweb.is_instance(uri)):
                counts["not_from_dicomweb"] += 1
                continue
            if isinstance(row.get("error_code"), str):  # unreadable: nothing to report on
                counts["failed_rows"] += 1
                continue
            url = dicomweb.base_url(uri)
            study, _, sop = dicomweb.instance_uids(uri)
            if dicomweb.exists(url, study, report_uid(sop, str(row.get("model_version")))):
                counts["already_there"] += 1
                continue
            dicomweb.store(url, [build_report(dicomweb.metadata(uri), row)])
            counts["stored"] += 1
    finally:
        bar.close()
    log.warning("structured reports: %s", dict(counts))
    return dict(counts)
