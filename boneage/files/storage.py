"""fsspec access, so every input and output is a URI: a local path, ``file://``, ``s3://`` or ``memory://``.

S3 credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL`` ...), so a local S3 stand-in and real S3 need no code change.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import PurePosixPath

import fsspec

from boneage.files import dicomweb


def read_bytes(uri: str) -> bytes:
    """Whole file as bytes; raises FileNotFoundError (or IsADirectoryError) like ``open``. A
    ``dicomweb+`` instance URI is fetched from the PACS (:mod:`boneage.files.dicomweb`)."""
    if dicomweb.is_dicomweb(uri):
        return dicomweb.read_instance(uri)
    with fsspec.open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that a reader never sees half of it.

    Local files are written to a temporary name and renamed; object stores publish an object only
    when its upload completes, which gives the same guarantee.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    parent = os.path.dirname(path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if fs.protocol in ("file", "local") or "file" in (fs.protocol or ()):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def file_size(uri: str) -> int | None:
    """Size in bytes, or None when the filesystem cannot tell cheaply."""
    if dicomweb.is_dicomweb(uri):
        return None
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return int(fs.size(path))
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception:  # noqa: BLE001 - some filesystems do not implement size
        return None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")


def file_id(path: str) -> str:
    """File stem, matching RSNA ids: "s3://bucket/train/1377.png" -> "1377"; a DICOMweb instance's
    SOP Instance UID (dots and all)."""
    if dicomweb.is_dicomweb(path) and dicomweb.is_instance(path):
        return dicomweb.instance_uids(path)[2]
    return PurePosixPath(path.rstrip("/")).stem


def list_inputs(inputs: Iterable[str]) -> list[str]:
    """Expand files, folders and URL prefixes into a sorted list of image URIs.

    In folders, files with an image suffix are taken, and so are files with no suffix at all
    (DICOM archives often have none); the decoder then checks the content. A ``dicomweb+`` query
    (:mod:`boneage.files.dicomweb`) gives the instances it matches on the PACS.
    """
    found: set[str] = set()
    for uri in inputs:
        if dicomweb.is_dicomweb(uri):
            found.update([uri] if dicomweb.is_instance(uri) else dicomweb.find_instances(uri))
            continue
        fs, path = fsspec.core.url_to_fs(uri)
        if fs.isdir(path):
            for child in fs.find(path):
                name = PurePosixPath(child).name
                if name.startswith("."):
                    continue
                suffix = PurePosixPath(name).suffix.lower()
                if suffix in IMAGE_SUFFIXES or suffix == "":
                    found.add(_as_uri(uri, fs, child))
        elif fs.exists(path):
            found.add(uri)
        else:
            raise FileNotFoundError(f"input not found: {uri}")
    return sorted(found)


def _as_uri(original: str, fs, path: str) -> str:
    """Keep local inputs as plain paths and remote ones as full URLs."""
    if "://" not in original or original.startswith("file://"):
        return path
    return fs.unstrip_protocol(path)
