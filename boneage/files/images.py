"""Reading radiographs (PNG, JPEG, DICOM) from any URI into one 8-bit grey image, bone bright.

Every failure becomes an :class:`~boneage.errors.ImageReadError` naming the file and the reason,
so one bad file in an archive of thousands is a row in a table, never a crashed job. Sizes are
checked from the file header *before* decoding, in pixels and in decoded bytes (samples per pixel
and bit depth), so a decompression bomb is refused without allocating its pixels; a read that blocks
(a FIFO, a hung network mount) is given up after a deadline.
"""

from __future__ import annotations

import datetime as _dt
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from boneage.errors import ImageReadError
from boneage.files import dicomweb, storage
from boneage.files.dicomweb import ArchiveError
from boneage.files.formats import DICOM_SUFFIXES, sniff

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # the file itself
# The decoded pixels: 16-bit grey at the full 50 Mpx (100 MB) and 8-bit RGB at 50 Mpx (150 MB) pass, as
# every real radiograph does; a 381 KB PNG declaring 7000x7000 16-bit RGBA (392 MB) does not.
DEFAULT_MAX_DECODED_BYTES = 160_000_000
# PNG colour type -> samples per pixel as OpenCV returns them (palette becomes BGR, grey+alpha BGRA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass
class Radiograph:
    """A decoded radiograph: ``pixels`` is HxW uint8 with bone bright, whatever the source.

    ``sex`` ("M"/"F") and ``chronological_age_months`` come from DICOM headers when present;
    patient identifiers are never copied here unless the caller asks (``identifiers=True``), and
    then only into ``identifiers``: patient name, ID and birth date, for outputs that must link
    back to the archive.
    """

    pixels: np.ndarray
    path: str
    source_format: str
    bits_stored: int
    sex: str | None = None
    chronological_age_months: float | None = None
    meta: dict = field(default_factory=dict)
    identifiers: dict | None = None


IDENTIFIER_FIELDS = {"patient_name": "PatientName", "patient_id": "PatientID", "patient_birth_date": "PatientBirthDate"}


def read_image(
    uri: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES, identifiers: bool = False,
    min_side: int | None = None, timeout: float | None = storage.READ_TIMEOUT_S,
) -> Radiograph:
    """Read and decode one radiograph from a path or fsspec URL.

    ``identifiers=True`` also returns the DICOM patient identifiers (all None for PNG/JPEG).
    ``min_side``: the shortest side the caller needs (see :func:`decode_image`); None decodes full size.
    ``timeout``: seconds the read may take before the file is an error (``read_timeout``), not a hang;
    a DICOMweb archive has its own HTTP timeouts.
    """
    try:
        deadline = None if dicomweb.is_dicomweb(uri) else timeout
        data = storage.with_deadline(_fetch, deadline, uri, max_bytes)
    except (ImageReadError, ArchiveError):  # an archive that is down or refuses us stops the run, not one film
        raise
    except TimeoutError as exc:
        raise ImageReadError(uri, "read_timeout", f"could not read file: {exc}") from None
    except FileNotFoundError:
        raise ImageReadError(uri, "not_found", "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(uri, "not_a_file", "is a directory, not an image file") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure is a per-file error
        raise ImageReadError(uri, "unreadable", f"could not read file: {exc}") from exc
    return decode_image(data, uri, max_pixels=max_pixels, identifiers=identifiers, min_side=min_side)


def _fetch(uri: str, max_bytes: int) -> bytes:
    """The file's bytes, refused from its size alone when over ``max_bytes``."""
    size = storage.file_size(uri)
    if size is not None and size > max_bytes:
        raise ImageReadError(uri, "too_large", f"file is {size} bytes, over the limit of {max_bytes}")
    return storage.read_bytes(uri)


@dataclass(frozen=True)
class _Limits:
    """What a header may declare before anything is decoded."""

    pixels: int = DEFAULT_MAX_PIXELS
    decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    def check(self, path: str, width: int, height: int, samples: int = 1, sample_bytes: int = 1) -> None:
        """Refuse a size that is invalid, over the pixel limit, or over the byte budget once decoded
        (pixels x samples per pixel x bytes per sample: a small file may declare 16-bit RGBA)."""
        if width <= 0 or height <= 0:
            raise ImageReadError(path, "decode_failed", f"invalid image size {width}x{height}")
        if width * height > self.pixels:
            raise ImageReadError(
                path, "too_large", f"image is {width}x{height} = {width * height / 1e6:.1f} Mpx, over the limit of "
                f"{self.pixels / 1e6:.1f} Mpx"
            )
        decoded = width * height * samples * sample_bytes
        if decoded > self.decoded_bytes:
            raise ImageReadError(
                path, "too_large", f"image is {width}x{height} with {samples} x {8 * sample_bytes}-bit samples = "
                f"{decoded / 1e6:.0f} MB decoded, over the limit of {self.decoded_bytes / 1e6:.0f} MB"
            )


def decode_image(data: bytes, path: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                 identifiers: bool = False, min_side: int | None = None,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Radiograph:
    """Decode file bytes; the format is sniffed from the content, not trusted from the name.

    ``min_side``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling: a fraction of
    the work) when its shorter side stays at least this long. PNG has no reduced decoding.
    ``max_decoded_bytes``: the most the decoded pixels may take, from the header's size, samples and depth.
    """
    rad = _decode_any(data, path, _Limits(max_pixels, max_decoded_bytes), identifiers, min_side)
    if identifiers and rad.identifiers is None:
        rad.identifiers = dict.fromkeys(IDENTIFIER_FIELDS)
    return rad


def _decode_any(data: bytes, path: str, limits: _Limits, identifiers: bool, min_side: int | None) -> Radiograph:
    if len(data) == 0:
        raise ImageReadError(path, "empty", "file is empty (0 bytes)")
    fmt = sniff(data[:256]) or ("dicom" if path.lower().endswith(DICOM_SUFFIXES) else None)
    try:
        if fmt in ("png", "jpeg"):
            return _decode_raster(data, path, fmt, limits, min_side)
        if fmt == "dicom":
            return _decode_dicom(data, path, limits, identifiers)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder bugs must not take the process down
        raise ImageReadError(path, "decode_failed", f"could not decode image: {type(exc).__name__}: {exc}") from exc
    raise ImageReadError(path, "unsupported_format", "not a PNG, JPEG or DICOM file (unrecognised content)")


def _png_size(data: bytes, path: str) -> tuple[int, int, int, int]:
    """Width, height, samples per pixel (as decoded) and bytes per sample, from the IHDR chunk."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(path, "truncated", "PNG header is truncated or damaged")
    width, height = struct.unpack(">II", data[16:24])
    bit_depth, colour_type = data[24], data[25]
    if b"IEND" not in data[-64:]:
        raise ImageReadError(path, "truncated", "PNG file is truncated (no IEND chunk at the end)")
    return width, height, _PNG_SAMPLES.get(colour_type, 4), 2 if bit_depth > 8 else 1


def _jpeg_size(data: bytes, path: str) -> tuple[int, int, int, int]:
    """Width, height, components and bytes per sample, from the frame header (SOF)."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            raise ImageReadError(path, "decode_failed", "JPEG marker structure is damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if b"\xff\xd9" not in data[-1024:]:
                raise ImageReadError(path, "truncated", "JPEG file is truncated (no end-of-image marker)")
            return width, height, max(1, data[i + 9]), 2 if data[i + 4] > 8 else 1
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
        i += 2 + seg_len
    raise ImageReadError(path, "truncated", "JPEG file is truncated before its frame header")


# libjpeg's scaled decoding, grey: OpenCV's flags for 1/8, 1/4 and 1/2 of each side
_REDUCED_JPEG = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                 (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


def _decode_raster(data: bytes, path: str, fmt: str, limits: _Limits, min_side: int | None = None) -> Radiograph:
    width, height, samples, sample_bytes = _png_size(data, path) if fmt == "png" else _jpeg_size(data, path)
    limits.check(path, width, height, samples, sample_bytes)
    flag = cv2.IMREAD_UNCHANGED
    if fmt == "jpeg" and min_side:
        flag = next((f for factor, f in _REDUCED_JPEG if min(width, height) // factor >= min_side), flag)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise ImageReadError(path, "decode_failed", f"{fmt.upper()} data could not be decoded (corrupt file)")
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        img = cv2.cvtColor(img, code)
    bits = 16 if img.dtype == np.uint16 else 8
    pixels = img if img.dtype == np.uint8 else robust_window(img)
    return Radiograph(pixels=np.ascontiguousarray(pixels), path=path, source_format=fmt, bits_stored=bits)


def robust_window(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5,
                  before: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Map high-bit-depth data to uint8 between two percentiles, so a few hot or dead pixels
    (or a large empty border) do not squash the anatomy into a handful of grey levels.
    ``before``: an elementwise transform first (a DICOM modality LUT)."""
    before = before or _as_float
    sample = values[::4, ::4] if values.ndim == 2 and min(values.shape) >= 64 else values
    lo, hi = np.percentile(before(sample), [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return per_value(values, lambda v: np.clip((before(v) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8))


def _as_float(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32)


def per_value(values: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform`` (elementwise, stored values in, uint8 out) applied to integer pixels through a lookup
    table of the values they span: a 16-bit film never gets a full-size float copy."""
    if values.dtype.kind not in "iu" or values.size < 4096:
        return transform(values)
    low, high = min(0, int(values.min())), int(values.max())
    if high - low > 1 << 20:
        return transform(values)
    table = transform(np.arange(low, high + 1).astype(values.dtype))
    return table[values] if low == 0 else table[np.subtract(values, low, dtype=np.int64)]


def _decode_dicom(data: bytes, path: str, limits: _Limits, identifiers: bool = False) -> Radiograph:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, "decode_failed", f"not a readable DICOM file: {exc}") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(path, "no_pixels", "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    limits.check(path, cols, rows, int(ds.get("SamplesPerPixel", 1) or 1), max(1, (bits + 7) // 8))
    try:  # the first frame only, of a multi-frame file: the others are never decoded
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder, corrupt or truncated pixel data
        raise ImageReadError(path, "decode_failed", f"DICOM pixel data could not be decoded: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict = {"photometric": photometric}
    if arr.ndim == 3:  # colour (RGB, or YBR already converted to RGB by pydicom)
        rgb = arr if arr.dtype == np.uint8 else robust_window(arr)
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        meta["window"] = "colour"
    else:
        pixels, meta["window"] = _dicom_to_uint8(arr, ds, apply_modality_lut, apply_voi_lut)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
    return Radiograph(
        pixels=np.ascontiguousarray(pixels),
        path=path,
        source_format="dicom",
        bits_stored=int(ds.get("BitsStored", 8) or 8),
        sex=_dicom_sex(ds),
        chronological_age_months=_dicom_age_months(ds),
        meta=meta,
        identifiers=_dicom_identifiers(ds) if identifiers else None,
    )


def _dicom_identifiers(ds) -> dict:
    """Patient name, ID and birth date as text (None when absent): only ever read on request."""
    values = {}
    for key, keyword in IDENTIFIER_FIELDS.items():
        value = str(ds.get(keyword, "") or "").strip()
        values[key] = value or None
    return values


def _dicom_to_uint8(arr: np.ndarray, ds, apply_modality_lut, apply_voi_lut) -> tuple[np.ndarray, str]:
    """Apply the header's own display transform when there is one (the radiographer's choice),
    else a robust window; per stored value (:func:`per_value`), never as a full-size float image."""
    stored = arr.dtype

    def modality(v: np.ndarray) -> np.ndarray:
        return apply_modality_lut(v.astype(stored), ds).astype(np.float32)

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        scale = 255.0 / (2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        return per_value(arr, lambda v: np.clip(apply_voi_lut(v.astype(stored), ds, index=0, prefer_lut=True)
                                                 .astype(np.float32) * scale, 0, 255).astype(np.uint8)), "voi_lut"
    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        sigmoid = str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID"

        def window(v: np.ndarray) -> np.ndarray:
            values = modality(v)
            if sigmoid:
                out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            else:  # LINEAR / LINEAR_EXACT (PS3.3 C.11.2.1.2)
                out = np.clip((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)
            return (out * 255.0 + 0.5).astype(np.uint8)

        return per_value(arr, window), "dicom_window"
    if arr.dtype == np.uint8 and int(ds.get("BitsStored", 8) or 8) <= 8:
        return arr.copy(), "none"
    return robust_window(arr, before=modality), "robust"


def _first_value(elem) -> float | None:
    if elem is None:
        return None
    value = elem.value if hasattr(elem, "value") else elem
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def parse_sex(value: str | bool | int | float | None) -> str | None:
    """Normalise M/F, male/female, true/false, 1/0 to "M"/"F"; None when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (bool, int, float, np.bool_)):
        return "M" if bool(value) else "F"
    text = str(value).strip().lower()
    if text in ("m", "male", "true", "1", "boy"):
        return "M"
    if text in ("f", "female", "false", "0", "girl"):
        return "F"
    raise ValueError(f"sex must be M or F, got {value!r}")


def _dicom_sex(ds) -> str | None:
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in ("M", "F") else None


def _dicom_age_months(ds) -> float | None:
    """Chronological age at the study, from birth and study dates (or PatientAge as a fallback)."""
    birth = _parse_da(ds.get("PatientBirthDate"))
    study = _parse_da(ds.get("StudyDate")) or _parse_da(ds.get("AcquisitionDate")) or _parse_da(ds.get("ContentDate"))
    if birth and study and study >= birth:
        return round((study - birth).days / 30.436875, 2)
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        n = int(age[:3])
        return round({"D": n / 30.436875, "W": n * 7 / 30.436875, "M": float(n), "Y": n * 12.0}[age[3]], 2)
    return None


def _parse_da(value) -> _dt.date | None:
    text = str(value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None
