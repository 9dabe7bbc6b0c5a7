"""Full-size films halved as ``rsna-half`` was made (``cv2.INTER_AREA``), to ask whether the model,
trained mostly on half-size films, scores a full-size film better from its half-size copy.

    python scripts/hires_model/halve_films.py ../shared/data/rsna/val OUT
    boneage evaluate --model MODEL --data OUT --labels ../shared/data/rsna/val.csv --out EVAL
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2


def main(source: str, out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(Path(source).iterdir()):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        height, width = image.shape[:2]
        cv2.imwrite(str(folder / f"{path.stem}.png"),
                    cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA))
        count += 1
    print(f"{count} films halved into {folder}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
