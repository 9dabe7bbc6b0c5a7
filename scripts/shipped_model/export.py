"""Write the shipped demonstration model: the all-images run's weights in fp16, with the held-out
run's validation figures recorded beside its own metadata (the all-images run has no unseen images).

    .venv/bin/python scripts/shipped_model/export.py ALL.pt OUT.pt --heldout HELDOUT.pt
"""

from __future__ import annotations

import argparse

from boneage.checkpoint import load_checkpoint, save_checkpoint

NOTE = ("Demonstration model: trained from random initialisation on the 202 labelled RSNA images shared with "
        "this project (177 after the quality check), at 256 px on a CPU. Not for clinical use. Train on the full "
        "RSNA set for a real model (README: 'Train on the full RSNA set').")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("all_images", help="model file of the run on all images (--select last)")
    parser.add_argument("out", help="where to write the shipped model")
    parser.add_argument("--heldout", required=True, help="model file of the held-out run")
    args = parser.parse_args()
    final, heldout = load_checkpoint(args.all_images), load_checkpoint(args.heldout)
    meta = dict(final.metadata)
    meta["note"] = NOTE
    meta["heldout_run"] = {"val": heldout.metadata["val"], "best_epoch": heldout.metadata["epoch"] + 1,
                           "data": heldout.metadata.get("data", {}), "history": heldout.metadata.get("history", [])}
    version = save_checkpoint(args.out, final.model, final.preprocess, meta, half=True)
    print(f"wrote {args.out} ({version})")


if __name__ == "__main__":
    main()
