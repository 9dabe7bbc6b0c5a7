"""Montages of inputs beside what the pipeline made of them, so a person can check the stages by eye."""

from __future__ import annotations

import cv2
import numpy as np

from boneage.errors import ImageReadError
from boneage.files import storage
from boneage.files.cache import read_cache, row_image
from boneage.files.images import read_image

TILE = 256


def _fit(image: np.ndarray, size: int = TILE) -> np.ndarray:
    h, w = image.shape
    scale = size / max(h, w)
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tile = np.zeros((size, size), np.uint8)
    y, x = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    tile[y : y + small.shape[0], x : x + small.shape[1]] = small
    return tile


def montage(pairs: list[tuple[str, np.ndarray, np.ndarray]], columns: int = 2) -> np.ndarray:
    """Rows of (caption, input, output) pairs: input on the left, output on the right."""
    tiles = []
    for caption, before, after in pairs:
        pair = np.hstack([_fit(before), np.full((TILE, 4), 255, np.uint8), _fit(after)])
        cv2.putText(pair, caption[:40], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1, cv2.LINE_AA)
        tiles.append(np.pad(pair, 4))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    return np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])


def write_sample_grid(cache_uri: str, png_uri: str, count: int = 8) -> int:
    """Montage of the first ``count`` cached images beside their original files; returns how many."""
    frame = read_cache(cache_uri).head(count)
    pairs = []
    for _, row in frame.iterrows():
        try:
            original = read_image(row["path"]).pixels
        except ImageReadError:
            continue
        label = "" if row["boneage"] is None or row["boneage"] != row["boneage"] else f" {row['boneage']:.0f} m"
        pairs.append((f"{row['id']}{label}", original, row_image(row)))
    if not pairs:
        raise ValueError(f"no cached images in {cache_uri} to show")
    ok, png = cv2.imencode(".png", montage(pairs))
    storage.write_bytes(png_uri, png.tobytes())
    return len(pairs)
