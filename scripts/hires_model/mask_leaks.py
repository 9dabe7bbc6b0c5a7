"""How many films' crops hold background: the share of the crop's border ring that the hand mask keeps.

    python scripts/hires_model/mask_leaks.py "FILES_GLOB" CONFIG [CONFIG ...]

A crop of the hand alone touches its box's edges only at the fingertips, the thumb and the wrist, so
most of a thin ring along the border is black (outside the mask). When the mask runs into a grey
background the ring is mostly kept. A film counts as wrong when more than ``LEAK`` of its ring is
kept (checked by eye on the montages of the 150 rsna/val films: README "The high-resolution preset").
"""

from __future__ import annotations

import glob
import sys

import numpy as np

from boneage.files.images import read_image
from boneage.prepare.stages import PreprocessConfig, preprocess

RING = 8  # pixels of the 256 px crop
LEAK = 0.24  # the median crop keeps 14% of its ring, 90% of them under 19%


def ring_kept(image: np.ndarray) -> float:
    ring = np.ones(image.shape, bool)
    ring[RING:-RING, RING:-RING] = False
    return float((image[ring] > 0).mean())


def main(files_glob: str, configs: list[str]) -> int:
    files = sorted(glob.glob(files_glob))
    for spec in configs:
        config = PreprocessConfig.named(spec)
        kept = {f.rsplit("/", 1)[-1].split(".")[0]: ring_kept(preprocess(read_image(f).pixels, config).image)
                for f in files}
        wrong = sorted(k for k, v in kept.items() if v > LEAK)
        print(f"{spec}: {len(wrong)} of {len(files)} crops hold background (ring kept > {LEAK:.0%}): {' '.join(wrong)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
