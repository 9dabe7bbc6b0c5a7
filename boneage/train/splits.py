"""The held-out split by id: the same image falls on the same side in every run, on every machine,
so a model's held-out figures can be recomputed later (``boneage evaluate --val-fraction``)."""

from __future__ import annotations

import hashlib


def in_validation(ident: str, fraction: float) -> bool:
    """Whether ``ident`` is in the held-out ``fraction`` (a stable hash of the id, not a random draw)."""
    return int(hashlib.sha256(str(ident).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction
