"""The held-out sets (a) and (a') as folders that ``boneage evaluate --labels`` reads: the ids that
``boneage train --val-fraction 0.1`` holds out (the same stable hash), linked from rsna-100px and
rsna-half, with their labels.

    python scripts/hires_model/heldout_sets.py ../shared/data OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from boneage.train.data import in_validation

SETS = {"a": ("rsna-100px/images", "rsna-100px/boneage-training-dataset.csv", "png"),
        "a_half": ("rsna-half/images", "rsna-half/labels.csv", "jpg")}


def main(data: str, out: str, fraction: float = 0.1) -> None:
    for name, (images, labels, ext) in SETS.items():
        frame = pd.read_csv(Path(data) / labels, dtype={"id": str})
        frame = frame[frame["id"].map(lambda i: in_validation(i, fraction))]
        folder = Path(out) / name / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for ident in frame["id"]:
            link = folder / f"{ident}.{ext}"
            if not link.exists():
                link.symlink_to((Path(data) / images / f"{ident}.{ext}").resolve())
        frame[["id", "boneage", "male"]].to_csv(Path(out) / name / "labels.csv", index=False)
        print(f"{name}: {len(frame)} films in {folder}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
