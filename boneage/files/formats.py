"""What a file is, from its first bytes: PNG, JPEG or DICOM.

One definition for the decoder (:mod:`boneage.files.images`) and the folder listing
(:mod:`boneage.files.storage`), so a file the listing takes is one the decoder tries: hospital exports
name DICOM files by UID (``1.2.826.0.1.3680043.8.498.1234567890``) or with numeric suffixes
(``I.001``, ``IM0001``), so a name says little.
"""

from __future__ import annotations

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC, DICOM_MAGIC_AT = b"DICM", 128  # after the 128-byte preamble of a DICOM Part 10 file
HEAD_BYTES = DICOM_MAGIC_AT + len(DICOM_MAGIC)  # enough to tell all three apart
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)


def sniff(head: bytes) -> str | None:
    """"png", "jpeg" or "dicom" from a file's first :data:`HEAD_BYTES` bytes; None when none of them."""
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head[DICOM_MAGIC_AT:HEAD_BYTES] == DICOM_MAGIC:
        return "dicom"
    return None
