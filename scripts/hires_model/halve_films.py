"""Full-size films halved as ``rsna-half`` was made (``cv2.INTER_AREA``), to ask whether the model,
trained mostly on half-size films, scores a full-size film better from its half-size copy.

    python scripts/hires_model/halve_films.py ../shared/data/rsna/val OUT
    boneage evaluate --model MODEL --data OUT --labels ../shared/data/rsna/val.csv --out EVAL
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

from boneage.files.images import read_image
from boneage.files.storage import file_id, list_inputs


def main(source: str, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = list_inputs([source])  # the films `boneage evaluate` would read, decoded the same way
    for path in paths:
        image = read_image(path).pixels
        height, width = image.shape[:2]
        cv2.imwrite(str(folder / f"{file_id(path)}.png"),
                    cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA))
    print(f"{len(paths)} films halved into {folder}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
