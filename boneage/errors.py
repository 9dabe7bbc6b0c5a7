"""Typed errors, so callers (CLI, bulk scoring, the HTTP endpoint) can report a reason per file
instead of crashing the whole job."""

from __future__ import annotations


class BoneAgeError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageReadError(BoneAgeError, ValueError):
    """An input file could not be turned into a grey image.

    ``code`` is a short machine-readable reason (e.g. ``empty``, ``truncated``, ``too_large``) that
    servers map to 4xx answers and tables store; ``str(err)`` names the file and the reason.
    """

    def __init__(self, path: str, code: str, reason: str):
        self.path = path
        self.code = code
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(BoneAgeError):
    """A checkpoint is missing, unreadable or written by an incompatible format version."""
