"""Hand segmenters behind one interface: ``segmenter(small_image) -> 0/255 mask`` at the same size.

They run at a reduced resolution (the caller downsizes, see ``PreprocessConfig.segment_size``) because
a hand outline needs no more than ~512 px. Segmenters are chosen by name; ones with weights are
built on first use and kept for the life of the process, so a Ray actor loads its model once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from boneage.prepare.segmentation.classical import classical_segmenter, largest_component, stretch
from boneage.prepare.segmentation.weights import weights_uri

Segmenter = Callable[[np.ndarray], np.ndarray]


def _unet(weights: str | None = None) -> Segmenter:
    from boneage.prepare.segmentation.unet import UNetSegmenter

    return UNetSegmenter.load(weights)


_FACTORIES: dict[str, Callable[[], Segmenter]] = {"classical": lambda: classical_segmenter, "unet": _unet}
_LOADED: dict[str, Segmenter] = {}
_LOADING = threading.Lock()  # threads preparing films at once (``boneage listen``) share one load


def get_segmenter(name: str) -> Segmenter:
    """``classical``, ``unet`` (the shipped weights) or ``unet:URI`` (weights of your own).

    The weights' URI is part of the name, so it is part of the preprocessing config and its hash: a
    cache or checkpoint made with one U-Net is never mistaken for one made with another.
    """
    with _LOADING:
        if name not in _LOADED:
            _LOADED[name] = _load(name)
        return _LOADED[name]


def _load(name: str) -> Segmenter:
    if name.startswith("unet:"):
        return _unet(name.removeprefix("unet:"))
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; available: {sorted(_FACTORIES)} or unet:URI") from None
    return factory()


def clear_cache() -> None:
    """Forget every loaded segmenter: the next ``get_segmenter`` loads its weights again (tests, new weights
    written at the same URI)."""
    with _LOADING:
        _LOADED.clear()


def register_segmenter(name: str, segmenter: Segmenter) -> None:
    """Make a segmenter selectable by name in ``PreprocessConfig.segmenter``."""
    _FACTORIES[name] = lambda: segmenter
    _LOADED.pop(name, None)


__all__ = ["Segmenter", "classical_segmenter", "clear_cache", "get_segmenter", "largest_component", "register_segmenter",
           "stretch", "weights_uri"]
