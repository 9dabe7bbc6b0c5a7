"""`boneage listen` as a modality meets it: C-STORE pushes with pynetdicom, reports arriving in a real Orthanc."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time

import cv2
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from boneage.files import dicomweb
from boneage.predict.predictor import Predictor
from boneage.predict.structured_report import read_report
from tests.helpers import ROOT, SHARED_DATA, Orthanc, free_port, hand_instance, make_dicom, orthanc_installed

pytestmark = [pytest.mark.integration,  # a real Orthanc PACS and C-STORE
              pytest.mark.skipif(not orthanc_installed(), reason="Orthanc and its DICOMweb plugin are not installed "
                                 "(CI installs them)")]


def _push(port: int, data: bytes):
    """C-STORE one instance to 127.0.0.1:port as a modality would; returns the status dataset."""
    from pynetdicom import AE

    dataset = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="BONEAGE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(dataset)
    finally:
        assoc.release()


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "boneage listen exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError("boneage listen did not open its port")


@pytest.mark.parametrize("onward", ["dicomweb", "c-store"])
def test_listen_scores_pushed_films_refuses_a_corrupt_one_and_stops_cleanly(tmp_path, onward):
    """Reports go on to Orthanc through DICOMweb (STOW-RS), or through its own C-STORE port."""
    if not (SHARED_DATA / "rsna" / "val.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    port = free_port()
    retry = tmp_path / "retry"
    destination = orthanc.query if onward == "dicomweb" else f"127.0.0.1:{orthanc.dicom}:ORTHANC"
    proc = subprocess.Popen([sys.executable, "-m", "boneage", "listen", "--destination", destination,
                             "--port", str(port), "--retry-folder", str(retry), "--workers", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, proc)
        labels = pd.read_csv(SHARED_DATA / "rsna" / "val.csv")
        labels = labels[labels["id"] != 1397].head(2)
        films = [hand_instance(cv2.imread(str(SHARED_DATA / "rsna" / "val" / f"{r.id}.png"), cv2.IMREAD_GRAYSCALE),
                               "M" if r.male else "F", generate_uid()) for r in labels.itertuples()]
        for data in films:
            assert _push(port, data).Status == 0x0000
        # pixel data cut short: refused at once, with the reason, and the receiver lives on
        corrupt = pydicom.dcmread(io.BytesIO(make_dicom(cv2.imread(str(SHARED_DATA / "rsna" / "val" / "1392.png"),
                                                                   cv2.IMREAD_GRAYSCALE))))
        corrupt.PixelData = corrupt.PixelData[:1000]
        buffer = io.BytesIO()
        corrupt.save_as(buffer, enforce_file_format=True)
        status = _push(port, buffer.getvalue())
        assert status.Status == 0xC210 and "decode_failed" in status.ErrorComment

        client = dicomweb.client(orthanc.url + "/dicom-web")
        deadline, reports = time.monotonic() + 180, []
        while time.monotonic() < deadline and len(reports) < 2:
            reports = client.search_for_instances(search_filters={"Modality": "SR"})
            time.sleep(1)
        assert len(reports) == 2
        predictor = Predictor.load(None, device="cpu")
        for data in films:
            source = pydicom.dcmread(io.BytesIO(data))
            local = tmp_path / f"{source.SOPInstanceUID}.dcm"
            local.write_bytes(data)
            expected = predictor.predict_files([str(local)])[0]
            found = client.search_for_instances(study_instance_uid=source.StudyInstanceUID,
                                                search_filters={"Modality": "SR"})
            assert len(found) == 1  # in the film's own study
            report = client.retrieve_instance(source.StudyInstanceUID, found[0]["0020000E"]["Value"][0],
                                              found[0]["00080018"]["Value"][0])
            assert read_report(report)["85151-9"] == pytest.approx(expected.bone_age_months, abs=0.01)
        assert _push(port, films[0]).Status == 0x0000  # still answering after all that
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        orthanc.stop()
        log = proc.stderr.read()
        print(log[-6000:])  # shown by pytest when the test fails
    assert code == 0, log[-3000:]
    assert "decode_failed" in log and "stopped" in log
    for data in films:  # no patient identifier in the log
        source = pydicom.dcmread(io.BytesIO(data))
        assert str(source.PatientName) not in log and source.PatientID not in log
