"""A dependency-free progress line with the rate, for long jobs run from a terminal or a log.

On a terminal the line is redrawn in place; in a log (``ray job submit``, CI) a line is printed at
most every ``log_every`` seconds, so the log shows progress without drowning in it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str = "", unit: str = "images", file: TextIO | None = None,
                 enabled: bool = True, log_every: float = 10.0):
        self.total, self.label, self.unit = total, label, unit
        self.file = file or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.log_every = log_every
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = 0.0

    @property
    def rate(self) -> float:
        seconds = time.perf_counter() - self.started
        return self.done / seconds if seconds > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (self.tty or now - self._last_draw >= self.log_every or self.done >= self.total):
            self._last_draw = now
            self._draw()

    def line(self) -> str:
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(fraction * 24)
        rate = self.rate
        eta = f"  ETA {(self.total - self.done) / rate:.0f} s" if 0 < rate and self.done < self.total else ""
        return (f"{self.label} {self.done}/{self.total} {100 * fraction:3.0f}% |{bar:<24}| "
                f"{rate:.2f} {self.unit}/s{eta}")

    def _draw(self) -> None:
        end = "" if self.tty else "\n"
        print(("\r" if self.tty else "") + self.line(), end=end, file=self.file, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=self.file, flush=True)
