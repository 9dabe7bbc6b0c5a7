"""fsspec access, so every input and output is a URI: a local path, ``file://``, ``s3://`` or ``memory://``.

S3 credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL`` ...), so a local S3 stand-in and real S3 need no code change.
"""

from __future__ import annotations

import os
import uuid

import fsspec


def read_bytes(uri: str) -> bytes:
    """Whole file as bytes; raises FileNotFoundError (or IsADirectoryError) like ``open``."""
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
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return int(fs.size(path))
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception:  # noqa: BLE001 - some filesystems do not implement size
        return None
