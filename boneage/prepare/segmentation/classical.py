"""The classical hand segmenter: thresholds and morphology, no learned weights.

It needs nothing but OpenCV, runs in milliseconds, and bootstraps the masks the U-Net is trained on.
"""

from __future__ import annotations

import cv2
import numpy as np

_OPEN_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
_BACKGROUND_GAP = np.ones((15, 15), np.uint8)


def stretch(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Percentile contrast stretch to 0..255, so thresholds behave the same on dim and bright films."""
    lo, hi = np.percentile(image, [low_pct, high_pct])
    out = (image.astype(np.float32) - lo) * (255.0 / max(float(hi - lo), 1.0))
    return np.clip(out, 0, 255).astype(np.uint8)


def largest_component(binary: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected blob: burned-in letters and markers are separate, smaller blobs."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros_like(binary)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == best, 255, 0).astype(np.uint8)


def _threshold_hand(blurred: np.ndarray) -> np.ndarray:
    # Triangle threshold sits just above the dominant background peak, so dim soft tissue stays in the
    # hand (Otsu tends to split bone from soft tissue instead). The opening cuts thin bridges to
    # collimator edges and film borders.
    _, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_TRIANGLE)
    mask = largest_component(cv2.morphologyEx(binary, cv2.MORPH_OPEN, _OPEN_KERNEL))
    if (mask > 0).mean() > 0.85:
        # Almost everything is "foreground": the dark peak was black padding around a grey film.
        # Threshold again within the film and keep that answer only if it is a plausible hand.
        inner = blurred[mask > 0].reshape(1, -1)
        t, _ = cv2.threshold(inner, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_TRIANGLE)
        binary = np.where(blurred > t, 255, 0).astype(np.uint8)
        retry = largest_component(cv2.morphologyEx(binary, cv2.MORPH_OPEN, _OPEN_KERNEL))
        if 0.2 <= (retry > 0).mean() <= 0.85:
            mask = retry
    return mask


def _background_surface(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Quadratic fit to the pixels well outside the hand: the heel effect and uneven exposure make
    the background brighter on one side than the hand on the other."""
    h, w = image.shape
    background = cv2.dilate(mask, _BACKGROUND_GAP) == 0
    idx = np.flatnonzero(background.ravel())[::7]
    if idx.size < 100:
        return None
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    design = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], -1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(design[idx], image.ravel()[idx].astype(np.float32), rcond=None)
    return (design @ coef).reshape(h, w)


def classical_segmenter(small: np.ndarray, flatten_iterations: int = 2) -> np.ndarray:
    """Threshold + largest component, with the background flattened by a fitted surface.

    Returns a 0/255 uint8 mask of the hand (holes are filled later by ``fill_contours``).
    """
    blurred = cv2.GaussianBlur(stretch(small), (7, 7), 0)
    mask = _threshold_hand(blurred)
    for _ in range(flatten_iterations):
        surface = _background_surface(blurred, mask)
        if surface is None:
            break
        mask = _threshold_hand(stretch(blurred.astype(np.float32) - surface))
    return mask
