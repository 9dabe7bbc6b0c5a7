"""Typed errors, so callers (CLI, bulk scoring, the HTTP endpoint) can report a reason per file
instead of crashing the whole job; and the one place that turns an outcome into an exit status."""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ExitCode(enum.IntEnum):
    """A command's exit status, whatever the command."""

    OK = 0
    FAILED = 1  # some inputs failed (a job goes on past them), or OUT holds another configuration's results
    ERROR = 2  # a bad argument, input or output: the command could not do its work
    ARCHIVE = 3  # the archive as a whole is down or refuses access: what was done is kept
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: what was done is committed; the same command finishes it


class BoneAgeError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = ExitCode.ERROR


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


class OutputConflictError(BoneAgeError):
    """A job's OUT holds results made with another configuration: resuming into it would mix the two."""

    exit_code = ExitCode.FAILED


def exit_code(outcome: BaseException | Mapping[str, object], *, failures_fail: bool = True) -> int | None:
    """The exit status of a command that raised ``outcome``, or of a job that returned it as its summary.

    An error this package raises carries its own code; a missing or unreadable file and a bad value are
    ``ERROR``; any other exception is a bug, None (let it raise). A job's summary: ``INTERRUPTED`` when it
    was stopped, ``FAILED`` when inputs failed and ``failures_fail`` (scoring: a film without a result is
    the user's to correct; a training cache simply goes without it), else ``OK``.
    """
    if isinstance(outcome, BoneAgeError):
        return int(outcome.exit_code)
    if isinstance(outcome, (OSError, ValueError)):
        return int(ExitCode.ERROR)
    if isinstance(outcome, BaseException):
        return None
    if outcome.get("interrupted"):
        return int(ExitCode.INTERRUPTED)
    return int(ExitCode.FAILED if failures_fail and outcome.get("failed") else ExitCode.OK)
