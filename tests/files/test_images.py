"""Reading radiographs: formats, bit depths, DICOM display transforms, URLs and every bad-input case."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import fsspec
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    RLELossless,
)

from boneage.errors import ImageReadError
from boneage.files.images import decode_image, read_image
from tests.helpers import FIXTURES, load_grey, make_dicom

HAND = FIXTURES / "rsna_1377.png"


def test_png_8bit_reads_exactly():
    rad = read_image(str(HAND))
    assert rad.source_format == "png" and rad.pixels.dtype == np.uint8
    assert np.array_equal(rad.pixels, load_grey(HAND))


def test_png_16bit_and_jpeg(tmp_path):
    grey = load_grey(HAND)
    p16 = tmp_path / "hand16.png"
    cv2.imwrite(str(p16), grey.astype(np.uint16) * 64 + 500)  # 14-bit-like data with an offset
    rad = read_image(str(p16))
    assert rad.bits_stored == 16 and rad.pixels.dtype == np.uint8
    assert np.corrcoef(rad.pixels.ravel(), grey.ravel())[0, 1] > 0.99
    assert rad.pixels.max() == 255 and rad.pixels.min() == 0  # robust window uses the full range
    pj = tmp_path / "hand.jpg"
    cv2.imwrite(str(pj), grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
    rad = read_image(str(pj))
    assert rad.source_format == "jpeg" and np.abs(rad.pixels.astype(int) - grey).mean() < 3


def test_colour_png_becomes_grey(tmp_path):
    grey = load_grey(HAND)
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    assert np.array_equal(read_image(str(path)).pixels, grey)


def test_memory_and_file_urls():
    data = HAND.read_bytes()
    with fsspec.open("memory://bucket/hand.png", "wb") as f:
        f.write(data)
    assert np.array_equal(read_image("memory://bucket/hand.png").pixels, load_grey(HAND))
    assert np.array_equal(read_image(HAND.as_uri()).pixels, load_grey(HAND))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("bits", [8, 16])
def test_hand_dicom_bone_is_bright(photometric, bits):
    grey = load_grey(HAND)
    stored = grey.astype(np.uint16) * 16 if bits == 16 else grey.copy()  # 12 bits stored in 16
    max_value = 4095 if bits == 16 else 255
    if photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(stored.dtype)
    data = make_dicom(stored, photometric, bits_stored=12 if bits == 16 else 8, sex="M",
                      PatientBirthDate="20100115", StudyDate="20200415")
    rad = decode_image(data, "hand.dcm")
    assert rad.source_format == "dicom" and rad.sex == "M"
    assert rad.chronological_age_months == pytest.approx(123.0, abs=0.2)
    if bits == 8:
        assert np.array_equal(rad.pixels, grey)
    else:
        assert np.corrcoef(rad.pixels.ravel(), grey.ravel())[0, 1] > 0.99
    assert "Doe" not in repr(rad) and "12345" not in repr(rad)


def test_dicom_window_is_applied():
    grey = load_grey(HAND).astype(np.uint16) * 16
    data = make_dicom(grey, bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    rad = decode_image(data, "w.dcm")
    assert rad.meta["window"] == "dicom_window"
    values = grey.astype(np.float64)
    expected = np.clip((values - 2047.5) / 1023 + 0.5, 0, 1) * 255
    assert np.abs(rad.pixels - expected).max() <= 1.0


def test_compressed_hand_dicoms_decode_like_uncompressed():
    grey = load_grey(HAND)
    plain = decode_image(make_dicom(grey), "plain.dcm").pixels
    for syntax, kwargs in [(RLELossless, {}), (JPEG2000Lossless, {"encoding_plugin": "pylibjpeg"})]:
        ds = pydicom.dcmread(io.BytesIO(make_dicom(grey)))
        ds.compress(syntax, **kwargs)
        buf = io.BytesIO()
        ds.save_as(buf)
        assert np.array_equal(decode_image(buf.getvalue(), f"{syntax.name}.dcm").pixels, plain), syntax.name


def test_real_cr_dicoms_uncompressed_and_jpeg2000_agree_and_are_inverted(shared_data):
    uncr = read_image(str(shared_data / "dicom" / "RG3_UNCR.dcm"))
    j2k = read_image(str(shared_data / "dicom" / "RG3_J2KR.dcm"))
    assert uncr.pixels.shape == (1760, 1760)
    assert np.array_equal(uncr.pixels, j2k.pixels)
    raw = pydicom.dcmread(str(shared_data / "dicom" / "RG3_UNCR.dcm")).pixel_array
    assert uncr.meta["photometric"] == "MONOCHROME1"
    # MONOCHROME1 stores air bright; after inversion the output runs opposite to the stored values.
    assert np.corrcoef(uncr.pixels[::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1] < -0.9


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _oversized_png_header() -> bytes:
    """A real PNG whose header claims 100000 x 100000 pixels: must be refused before decoding."""
    data = bytearray(HAND.read_bytes())
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("empty.png", lambda: b"", "empty"),
        ("truncated.png", lambda: HAND.read_bytes()[: len(HAND.read_bytes()) // 2], "truncated"),
        ("notes.png", lambda: b"this is a text file, not an image\n" * 20, "unsupported_format"),
        ("nopixels.dcm", lambda: make_dicom(load_grey(HAND), with_pixels=False), "no_pixels"),
        ("huge.png", _oversized_png_header, "too_large"),
        ("truncated.jpg", lambda: cv2.imencode(".jpg", load_grey(HAND))[1].tobytes()[:4000], "truncated"),
        ("garbage.dcm", lambda: b"\x00" * 128 + b"DICM" + b"\x07" * 200, None),
    ],
)
def test_bad_inputs_raise_one_clear_error(tmp_path, name, make, code):
    path = _write(tmp_path, name, make())
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.path == path and name in str(info.value)
    if code:
        assert info.value.code == code, str(info.value)


def test_pixel_limit_and_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="Mpx") as info:
        read_image(str(HAND), max_pixels=10_000)
    assert info.value.code == "too_large"
    with pytest.raises(ImageReadError) as info:
        read_image(str(tmp_path / "nope.png"))
    assert info.value.code == "not_found"
    with pytest.raises(ImageReadError) as info:
        read_image(str(tmp_path))
    assert info.value.code in ("not_a_file", "unreadable")


def test_multi_frame_dicom_gives_its_first_frame():
    hand = load_grey(FIXTURES / "rsna_1377.png")
    frames = np.stack([hand, 255 - hand, np.zeros_like(hand)])
    first = decode_image(make_dicom(frames), "multi.dcm").pixels
    np.testing.assert_array_equal(first, decode_image(make_dicom(hand), "single.dcm").pixels)


@pytest.mark.parametrize("header", [{}, {"RescaleSlope": 2, "RescaleIntercept": -1024},
                                    {"WindowCenter": 1800, "WindowWidth": 2400}])
def test_16bit_dicom_through_lookup_tables_matches_float_arithmetic(header):
    """The window is computed once per stored value (no full-size float copy) and gives the pixels
    that float arithmetic over the whole film gives."""
    rng = np.random.default_rng(0)
    pixels = (load_grey(FIXTURES / "rsna_1377.png").astype(np.uint16) * 16 + rng.integers(0, 16, (512, 379))).astype(
        np.uint16)
    out = decode_image(make_dicom(pixels, bits_stored=12, **header), "hand.dcm").pixels
    values = pixels.astype(np.float64) * header.get("RescaleSlope", 1) + header.get("RescaleIntercept", 0)
    if "WindowCenter" in header:
        c, w = header["WindowCenter"], header["WindowWidth"]
        expected = (np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)
    else:
        lo, hi = np.percentile(values[::4, ::4], [0.5, 99.5])
        expected = np.clip((values - lo) * (255 / (hi - lo)), 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out != expected).mean() < 0.01  # float32 against float64 rounding, at most


def test_jpeg_decodes_at_a_reduced_scale_only_when_asked_and_large_enough(shared_data):
    film = cv2.imread(str(shared_data / "rsna" / "val" / "1392.png"), cv2.IMREAD_GRAYSCALE)
    jpeg = cv2.imencode(".jpg", film, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    h, w = film.shape
    assert decode_image(jpeg, "film.jpg").pixels.shape == (h, w)
    for min_side in (min(h, w) // 8, min(h, w) // 4, min(h, w) // 2):
        factor = min(h, w) // min_side
        reduced = decode_image(jpeg, "film.jpg", min_side=min_side).pixels
        assert reduced.shape == (-(-h // factor), -(-w // factor)), (min_side, reduced.shape)
        # the same film: its grey levels, scaled down
        small = cv2.resize(film, (reduced.shape[1], reduced.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(reduced.astype(int) - small).mean() < 3
    assert decode_image(jpeg, "film.jpg", min_side=min(h, w)).pixels.shape == (h, w)  # nothing to spare
    png = cv2.imencode(".png", film)[1].tobytes()
    assert decode_image(png, "film.png", min_side=100).pixels.shape == (h, w)  # PNG has no reduced decoding


def _png_bomb(width: int, height: int, bit_depth: int = 16, colour_type: int = 6) -> bytes:
    """A real, decodable PNG of zeros (16-bit RGBA by default): a few hundred KB declaring hundreds of MB.

    Built from one raw deflate block repeated (a full flush resets the compressor, so equal input gives
    equal bytes), so making it costs a fraction of a second instead of compressing every row; the zlib
    checksum of n zero bytes is (n mod 65521) << 16 | 1."""
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\0" * (1 + width * samples * bit_depth // 8)  # filter byte, then the row
    rows_per_block = 1000
    assert height % rows_per_block == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * rows_per_block) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = struct.pack(">I", (len(row) * height % 65521) << 16 | 1)
    idat = b"\x78\xda" + block * (height // rows_per_block) + deflate.flush() + checksum

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_small_16bit_rgba_bomb_under_the_pixel_limit_is_refused_by_its_decoded_bytes(tmp_path):
    """Issue 31, item 4: 381 KB declaring 7000x7000 16-bit RGBA (49 Mpx, under the 50 Mpx limit) decoded
    to 392 MB (6.2 s, 833 MB peak); it is now refused from its header, in milliseconds."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb(7000, 7000))
    assert bomb.stat().st_size < 500_000
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="392 MB decoded") as info:
        read_image(str(bomb))
    assert time.perf_counter() - started < 0.5 and info.value.code == "too_large"


def test_the_byte_budget_passes_real_radiographs_and_counts_dicom_samples(tmp_path):
    """The budget is bytes once decoded: 16-bit grey at 49 Mpx passes it (and decodes), 16-bit RGBA does not;
    a DICOM declaring 3 x 16-bit samples over 7000x7000 is refused before its pixels are touched."""
    grey16 = decode_image(_png_bomb(7000, 7000, colour_type=0), "grey16.png")
    assert grey16.pixels.shape == (7000, 7000) and grey16.bits_stored == 16
    tiny = np.zeros((8, 8), np.uint16)
    declared = make_dicom(tiny, Rows=7000, Columns=7000, SamplesPerPixel=3, PhotometricInterpretation="RGB")
    with pytest.raises(ImageReadError, match="3 x 16-bit samples = 294 MB decoded") as info:
        decode_image(declared, "rgb16.dcm")
    assert info.value.code == "too_large"
