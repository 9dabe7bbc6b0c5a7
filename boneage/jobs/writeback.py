"""Results back into the archive: each scored DICOMweb film gets its Structured Report in its own study.

Runs after scoring, from the committed results, so it is resumable like scoring: a report already in
the archive (same film, same model version: the same SOP Instance UID) is not stored again.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import pydicom

from boneage.files import dicomweb
from boneage.files.images import decode_image
from boneage.predict.predictor import Predictor
from boneage.predict.report import page_contents, render_rgb
from boneage.predict.structured_report import (
    build_report,
    build_secondary_capture,
    report_uid,
    secondary_capture_uid,
)
from boneage.progress import Progress

log = logging.getLogger(__name__)


def write_back(rows: Iterable[Mapping], progress: bool = True, secondary_capture: Predictor | None = None) -> dict:
    """Store the SR of every scored or refused row read from a DICOMweb archive; returns the counts
    (``stored``, ``already_there``, ``not_from_dicomweb``, ``failed_rows``, and ``page_stored``,
    ``page_already_there``). ``secondary_capture``: the run's predictor, to draw each film's one-page
    report (with its heatmap) and store it too, as a Secondary Capture image."""
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
            version = str(row.get("model_version"))
            if dicomweb.exists(url, study, report_uid(sop, version)):
                counts["already_there"] += 1
            else:
                dicomweb.store(url, [build_report(dicomweb.metadata(uri), row)])
                counts["stored"] += 1
            if secondary_capture is None:
                continue
            if dicomweb.exists(url, study, secondary_capture_uid(sop, version)):
                counts["page_already_there"] += 1
                continue
            data = dicomweb.read_instance(uri)  # the whole film, so its header too: no second request for it
            rad = decode_image(data, uri, min_side=secondary_capture.preprocess_config.decode_min_side)
            page = render_rgb(*page_contents(secondary_capture, rad, row.get("sex"),
                                             row.get("chronological_age_months")))
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            dicomweb.store(url, [build_secondary_capture(header, page, version)])
            counts["page_stored"] += 1
    finally:
        bar.close()
    log.info("structured reports: %s", dict(counts))
    return dict(counts)
