#!/usr/bin/env bash
# Reproduces boneage/prepare/segmentation/unet_hand.pt, the U-Net weights shipped in the package.
# Masks are bootstrapped with the classical segmenter, quality-checked, and the ones rejected on
# review (scripts/segmenter_excluded_on_review.csv) left out; 1377 has the only hand-drawn mask
# and is held out to measure the result. Takes about 25 minutes on 2 CPU cores.
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/segmenter}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
$BONEAGE bootstrap-masks "$DATA/rsna/train" "$DATA/rsna/val" "$DATA/examples" \
  --out "$WORK/masks" --montage "$WORK/masks-montage.png" --exclude scripts/segmenter_excluded_on_review.csv
$BONEAGE train-segmenter --images "$DATA/rsna/train" "$DATA/rsna/val" "$DATA/examples" --masks "$WORK/masks" \
  --out "${OUT:-boneage/prepare/segmentation/unet_hand.pt}" --epochs 50 --patches-per-image 4 --seed 0 \
  --mask-source "classical segmenter on the shared RSNA images, quality-checked, 5 rejected on review" \
  --check "$DATA/rsna/train/1377.png" "$DATA/rsna/masks/1377.png"
