"""Progress of long work: tqdm's bar on a terminal, a plain line every ``log_every`` seconds in a log.

tqdm redraws one line in place with carriage returns, which a log (``ray job submit``, CI, a file)
shows as one endless line. Off a terminal, :class:`Progress` therefore writes each refresh as a line
of its own, at most every ``log_every`` seconds and once at the end, with the count, the rate and
the time left.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) in {elapsed}, {remaining} left, {rate_noinv_fmt}"


def is_terminal(file: TextIO) -> bool:
    return bool(getattr(file, "isatty", lambda: False)())


class Progress(tqdm):
    """``Progress(total, "scoring")``; ``update(n)``; ``close()`` (or a ``with`` block). ``enabled=False``
    (``--no-progress``) or ``total == 0`` shows nothing; the rest is tqdm's (``set_postfix``, iteration)."""

    def __init__(self, total: int | None, label: str = "", unit: str = "images", file: TextIO | None = None,
                 enabled: bool = True, log_every: float = 10.0, **kwargs):
        file = file or sys.stderr
        self.terminal = is_terminal(file)
        if not self.terminal:
            kwargs.setdefault("bar_format", LOG_FORMAT if total else "{desc}: {n_fmt} in {elapsed}, {rate_noinv_fmt}")
        super().__init__(total=total, desc=label, unit=unit, file=file, disable=not enabled or total == 0,
                         mininterval=0.2 if self.terminal else log_every, maxinterval=max(log_every, 10.0),
                         dynamic_ncols=self.terminal, ascii=not self.terminal, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """On a terminal, tqdm's redraw; in a log, the state as one line (clearing a line means nothing there)."""
        if self.terminal:
            return super().display(msg, pos)
        if msg == "":
            return False
        self.fp.write(f"{self if msg is None else msg}\n")
        self.fp.flush()
        return True

    def print(self, text: str, file: TextIO | None = None) -> None:
        """A line of output (a result) beside the bar: tqdm clears the bar, the line is written and flushed
        at once (a pipe reader gets it now), and the bar is drawn again below it."""
        file = file or sys.stdout
        with self.external_write_mode(file=file):
            print(text, file=file, flush=True)

    def clear(self, nolock: bool = False) -> None:
        if self.terminal:
            super().clear(nolock)

    def close(self) -> None:
        """The final state once more in a log, unless the last line already showed it."""
        if not self.terminal and not self.disable and getattr(self, "last_print_n", self.n) != self.n:
            self._ema_dt = lambda: None  # the overall rate, as tqdm shows it at the end
            self.display()
        if not self.terminal:
            self.leave = False  # tqdm's last redraw and newline: the line above is already the last
        super().close()
