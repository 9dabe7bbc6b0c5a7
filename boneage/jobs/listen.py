"""``boneage listen``: a DICOM receiver that scores each hand film a modality or PACS sends it.

A C-STORE SCP (pynetdicom). Each instance is checked as it arrives: a film that cannot be decoded is
refused at once, its reason in the C-STORE status's error comment and in the log. An accepted film
is first written to ``RETRY/incoming`` (so nothing is lost if the process dies), then queued; a
bounded queue (a full queue answers "out of resources", and the sender tries again later) feeds a
pool of worker threads. Each worker scores the film through the one prediction path and sends its
Structured Report (:mod:`boneage.predict.structured_report`) to the destination: a DICOMweb root
(STOW-RS) or a C-STORE SCP (``HOST:PORT:AE_TITLE``). A sent film's file is removed; one whose report
could not be sent stays in ``incoming`` and is queued again at the next start; one that could not
be scored moves to ``RETRY/failed`` with a ``.txt`` giving the reason. SIGTERM (or Ctrl-C) stops
accepting, finishes the films in hand and exits. Logs name films by SOP Instance UID only.
"""

from __future__ import annotations

import argparse
import io
import logging
import queue
import signal
import threading
from pathlib import Path

import pydicom

from boneage.errors import BoneAgeError, ImageReadError
from boneage.files import dicomweb
from boneage.files.images import Radiograph, decode_image
from boneage.predict.predictor import Predictor, prepare_radiograph
from boneage.predict.structured_report import build_report

log = logging.getLogger("boneage.listen")
OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SUCCESS = 0xA700, 0xC210, 0x0000


class Destination:
    """Where reports go: ``dicomweb+http(s)://.../dicom-web`` (STOW-RS) or ``HOST:PORT:AE_TITLE`` (C-STORE)."""

    def __init__(self, spec: str, ae_title: str):
        self.spec, self.ae_title = spec, ae_title
        if not dicomweb.is_dicomweb(spec):
            host, port, called = (spec.rsplit(":", 2) + ["", ""])[:3]
            if not (host and port.isdigit() and called):
                raise ValueError(f"--destination must be dicomweb+http(s)://... or HOST:PORT:AE_TITLE, not {spec!r}")
            self.address = (host, int(port), called)

    def send(self, report: pydicom.Dataset) -> None:
        if dicomweb.is_dicomweb(self.spec):
            dicomweb.store(dicomweb.base_url(self.spec), [report])
            return
        from pynetdicom import AE

        host, port, called = self.address
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(report.SOPClassUID, report.file_meta.TransferSyntaxUID)
        assoc = ae.associate(host, port, ae_title=called)
        if not assoc.is_established:
            raise dicomweb.SourceUnavailable(f"the C-STORE destination {host}:{port} ({called}) refused the association")
        try:
            status = assoc.send_c_store(report)
        finally:
            assoc.release()
        if not status or status.Status != SUCCESS:
            raise dicomweb.SourceUnavailable(f"the C-STORE destination answered status {getattr(status, 'Status', None)}")


class Receiver:
    """The queue, the workers and the C-STORE handler; :meth:`serve` runs until :meth:`stop`."""

    def __init__(self, predictor: Predictor, destination: Destination, retry: Path, *, workers: int = 2,
                 queue_size: int = 32):
        self.predictor, self.destination = predictor, destination
        self.incoming, self.failed = retry / "incoming", retry / "failed"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)
        self.queue: queue.Queue[tuple[Path, Radiograph | None] | None] = queue.Queue(maxsize=queue_size)
        self.workers = [threading.Thread(target=self._work, name=f"boneage-listen-{i}", daemon=True)
                        for i in range(max(1, workers))]
        self.model_lock = threading.Lock()  # one forward pass at a time; preparing runs in parallel
        self.stopping = threading.Event()
        self.server = None

    # --- receiving ---------------------------------------------------------------------------

    def on_store(self, event) -> int | pydicom.Dataset:
        """C-STORE: check, keep, queue; a film that cannot be decoded is refused with its reason."""
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
            sop = str(dataset.SOPInstanceUID)
            rad = decode_image(data, f"{sop}.dcm", min_side=self.predictor.preprocess_config.decode_min_side)
        except ImageReadError as exc:
            log.warning("refused instance: %s (%s)", exc.reason, exc.code)
            return _status(CANNOT_UNDERSTAND, f"{exc.code}: {exc.reason}")
        except Exception as exc:  # noqa: BLE001 - a malformed dataset is refused, never a crash
            log.warning("refused instance: unreadable dataset (%s)", type(exc).__name__)
            return _status(CANNOT_UNDERSTAND, f"unreadable dataset: {type(exc).__name__}")
        if self.stopping.is_set() or self.queue.full():
            return _status(OUT_OF_RESOURCES, "busy: send again later")
        path = self.incoming / f"{sop}.dcm"
        path.write_bytes(data)
        self.queue.put((path, rad))  # the decoded film goes along: the worker does not decode it again
        log.info("received %s", sop)
        return SUCCESS

    # --- scoring -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            path, rad = item
            try:
                self.process(path, rad)
            except Exception:  # noqa: BLE001 - the worker lives on; the file stays for a retry
                log.exception("could not process %s; kept for a retry", path.stem)

    def process(self, path: Path, rad: Radiograph | None = None) -> None:
        """Score one kept film (``rad``: already decoded, else read from ``path``) and send its report."""
        data = path.read_bytes()
        sop = path.stem
        try:
            if rad is None:
                rad = decode_image(data, path.name, min_side=self.predictor.preprocess_config.decode_min_side)
            row = prepare_radiograph(rad, self.predictor.preprocess_config)
            if row.error:
                raise BoneAgeError(row.error)
            with self.model_lock:
                row = self.predictor.predict_prepared([row])[0]
        except (BoneAgeError, ValueError) as exc:
            (self.failed / f"{sop}.txt").write_text(f"{exc}\n")
            path.replace(self.failed / path.name)
            log.warning("not scored %s: %s (kept in %s)", sop, exc, self.failed)
            return
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        report = build_report(header, {**row.to_dict(), **(row.quality or {})})
        try:
            self.destination.send(report)
        except (dicomweb.ArchiveError, OSError) as exc:
            log.warning("report of %s not sent (%s); kept in %s for the next start", sop, exc, self.incoming)
            return
        path.unlink()
        log.info("scored %s: %s; report %s sent", sop, "refused" if row.bone_age_months is None
                 else f"{row.bone_age_months:.1f} months", report.SOPInstanceUID)

    # --- running -----------------------------------------------------------------------------

    def serve(self, host: str, port: int, ae_title: str) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        for worker in self.workers:
            worker.start()
        for path in sorted(self.incoming.glob("*.dcm")):  # left by an earlier run
            self.queue.put((path, None))
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        log.info("boneage listening on %s:%d as %s; reports to %s", host, port, ae_title, self.destination.spec)
        self.stopping.wait()
        self.server.shutdown()
        for _ in self.workers:
            self.queue.put(None)
        for worker in self.workers:
            worker.join()
        log.info("stopped; %d film(s) left in %s for the next start", len(list(self.incoming.glob("*.dcm"))),
                 self.incoming)

    def stop(self, *_args) -> None:
        self.stopping.set()


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def run_from_args(args: argparse.Namespace) -> int:
    destination = Destination(args.destination, args.ae_title)
    receiver = Receiver(Predictor.load(args.model, device="cpu"), destination, Path(args.retry_folder),
                        workers=args.workers, queue_size=args.queue_size)
    signal.signal(signal.SIGTERM, receiver.stop)
    signal.signal(signal.SIGINT, receiver.stop)
    receiver.serve(args.host, args.port, args.ae_title)
    return 0
