"""Instrumentation that wraps a loop's input from outside, so the loop itself (:func:`boneage.train.loop.train_epoch`)
carries no timers, callbacks or out-parameters."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

_END = object()


class Waited:
    """An iterable that adds up the seconds its consumer waits for each next item (is an epoch input-bound?)."""

    def __init__(self, items: Iterable):
        self.items, self.seconds = items, 0.0

    def __iter__(self) -> Iterator:
        iterator = iter(self.items)
        while True:
            started = time.perf_counter()
            item = next(iterator, _END)
            self.seconds += time.perf_counter() - started
            if item is _END:
                return
            yield item


def after_each(items: Iterable, action: Callable[[], object]) -> Iterator:
    """``items``, calling ``action()`` after each is used (when the consumer asks for the next, or ends):
    a progress bar's step, or a per-step learning-rate schedule."""
    for item in items:
        yield item
        action()
