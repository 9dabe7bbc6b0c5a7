"""One logging setup for every command: the project's own lines at INFO, other libraries' at WARNING.

An info line is the message alone (it reads like the command's output); a warning or an error says so.
``--verbose`` (or ``BONEAGE_VERBOSE=1``, for a job submitted to a cluster) turns on DEBUG for the
project and INFO for the rest, and brings Ray's own logs back (:func:`boneage.raycluster.ensure_ray`).
A log line is written through tqdm on a terminal, so it never tears a progress bar.
"""

from __future__ import annotations

import logging
import os
import sys

PROJECT_LOGGER = "boneage"
VERBOSE_ENV = "BONEAGE_VERBOSE"
_FALSE = ("", "0", "false", "no", "off")


class _Formatter(logging.Formatter):
    """The message alone at INFO and below (it reads as the command's output); ``WARNING: message`` above."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"


def _formatter(loud: bool, timestamps: bool) -> logging.Formatter:
    """Plain lines normally; the level and the logger's name when verbose; the time too for a service."""
    if timestamps:
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return logging.Formatter("%(levelname)s %(name)s: %(message)s") if loud else _Formatter("%(message)s")


class _Handler(logging.StreamHandler):
    """stderr; through ``tqdm.write`` on a terminal, which clears a bar, writes the line and redraws it."""

    @property
    def stream(self):  # the current sys.stderr, as logging's lastResort: never one replaced since (and closed)
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tty = self.stream.isatty()
        except ValueError:  # a closed stream: nowhere to write
            return
        if not tty:
            return super().emit(record)
        try:
            from tqdm import tqdm  # here: `boneage --help` stays free of it

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def verbose() -> bool:
    """Whether the user asked for everything (``--verbose``, or ``BONEAGE_VERBOSE`` set)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in _FALSE


def setup_logging(verbose_logs: bool | None = None, *, timestamps: bool = False) -> None:
    """Configure the root logger once per process (later calls replace our handler, never stack one).

    ``verbose_logs=None`` keeps what an earlier call chose (the CLI's ``--verbose``), else reads
    ``BONEAGE_VERBOSE``; ``True`` also sets ``BONEAGE_VERBOSE`` so that Ray's setup and the Ray workers
    started later see it. ``timestamps`` prefixes every line with the time (a long-running service).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if verbose_logs is None and ours and not timestamps:
        return
    if verbose_logs:
        os.environ[VERBOSE_ENV] = "1"
    loud = verbose() if verbose_logs is None else verbose_logs
    for handler in ours:
        root.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(_formatter(loud, timestamps))
    root.addHandler(handler)
    set_levels(loud)


def set_levels(verbose_logs: bool | None = None) -> None:
    """The levels alone (the project at INFO, the rest at WARNING; DEBUG and INFO when verbose), for a
    process whose root logger a host already writes out: a Ray Train worker, to its console and log file."""
    loud = verbose() if verbose_logs is None else verbose_logs
    logging.getLogger().setLevel(logging.INFO if loud else logging.WARNING)
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.DEBUG if loud else logging.INFO)
