"""Model files of every kind (bone-age checkpoint, U-Net, film check): a ``torch.save`` of plain types and
tensors with a format tag and version, read back with ``weights_only=True`` (no pickled code runs)."""

from __future__ import annotations

import io

import torch

from boneage import __version__
from boneage.errors import CheckpointError
from boneage.files import storage


def write_payload(uri: str, payload: dict) -> bytes:
    """``torch.save`` of plain types and tensors to any URI, atomically; returns the bytes written."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    storage.write_bytes(uri, data)
    return data


def read_payload(uri: str, fmt: str, format_version: int,
                 map_location: str | torch.device = "cpu") -> tuple[dict, bytes]:
    """Load a file written by :func:`write_payload` and check its format tag and version.

    Loaded with ``weights_only=True``: no pickled code runs, so a file from anywhere is safe to open.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(f"{fmt} not found: {uri}") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{uri} is not a readable {fmt} file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{uri} is not a {fmt} file (no '{fmt}' format tag)")
    found = payload.get("format_version")
    if found != format_version:
        raise CheckpointError(
            f"{uri} has {fmt} format version {found}; this boneage ({__version__}) reads version {format_version}"
        )
    return payload, data
