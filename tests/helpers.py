"""What many tests share: the repository's paths, the fixtures' loader, a DICOM writer, the command line.
Imported by test files and by ``conftest.py`` (which holds only fixtures and the marker hook)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

from boneage.train.segmenter import dice  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
               sex: str | None = "F", with_pixels: bool = True, **extra) -> bytes:
    """A hand DICOM written the way a modality would: pixels as given, header as given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345"
    if sex:
        ds.PatientSex = sex
    if pixels.ndim == 3:  # a multi-frame image: frames first
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in extra.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boneage", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=env)


# --- a real PACS: Orthanc from Debian's packages, on loopback ------------------------------------

ORTHANC = shutil.which("Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")


def orthanc_installed() -> bool:
    return ORTHANC is not None and (ORTHANC_PLUGINS / "libOrthancDicomWeb.so").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """A real Orthanc on free loopback ports with its own storage folder; stop() and start() keep it."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None):
        """``users``: HTTP basic users and passwords the server requires (none: open)."""
        self.folder = folder
        self.auth = next(iter(users.items())) if users else None
        self.http, self.dicom = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        config = {"Name": "boneage-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.http, "DicomPort": self.dicom, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
                  "Plugins": [str(ORTHANC_PLUGINS)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/dicom-web/studies", auth=self.auth, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def upload(self, data: bytes) -> None:
        response = requests.post(self.url + "/instances", data=data, auth=self.auth, timeout=30)
        assert response.status_code == 200, response.text

    @property
    def query(self) -> str:
        return f"dicomweb+{self.url}/dicom-web"


def hand_instance(pixels: np.ndarray, sex: str, study: str, photometric: str = "MONOCHROME2",
                   j2k: bool = False) -> bytes:
    """A film wrapped as a CR hand instance, as a modality would send it."""
    stored = 255 - pixels if photometric == "MONOCHROME1" else pixels
    data = make_dicom(stored, photometric=photometric, sex=sex, StudyInstanceUID=study,
                      SeriesInstanceUID=generate_uid(), BodyPartExamined="HAND", PatientBirthDate="20100101",
                      StudyDate="20200601")
    if j2k:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.compress(JPEG2000Lossless)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    return data


