#!/usr/bin/env bash
# Reproduces boneage/models/boneage_demo.pt, the demonstration model shipped in the package, with the
# project's own commands: the Ray Data cache, then Ray Train (1 worker using both cores of a 2-core
# machine), first on 80% of the 202 labelled shared images to measure it on the 20% it never saw
# (split by id hash), then on everything for the shipped weights, with the held-out run's best epoch
# count. 256 px instead of the recipe's 384 so that it trains on a CPU in about an hour.
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/shipped-model}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
CONFIG=${CONFIG:-scripts/shipped_model/train_config.json}
RUN=(--workers 1 --cpus-per-worker 1 --torch-threads 2 --storage "$WORK/runs")
mkdir -p "$WORK"
(cat "$DATA/rsna/train.csv"; tail -n +2 "$DATA/rsna/val.csv") > "$WORK/labels.csv"
$BONEAGE preprocess "$DATA/rsna/train" "$DATA/rsna/val" --labels "$WORK/labels.csv" --out "$WORK/cache" \
  --output-size 256
# 1. held out: 20% of the images by id hash, the best epoch by validation MAE
$BONEAGE train --data "$WORK/cache" --val-fraction 0.2 --config "$CONFIG" --out "$WORK/heldout.pt" \
  --name heldout "${RUN[@]}"
$BONEAGE evaluate --model "$WORK/heldout.pt" --data "$WORK/cache" --out "$WORK/heldout-eval"
# 2. everything, for the shipped weights: the held-out run's best epoch count, the final epoch kept
EPOCHS=${EPOCHS:-$(.venv/bin/python -c "import sys; from boneage.checkpoint import load_checkpoint; print(load_checkpoint(sys.argv[1]).metadata['epoch'] + 1)" "$WORK/heldout.pt")}
$BONEAGE train --data "$WORK/cache" --val "$WORK/cache" --config "$CONFIG" --epochs "$EPOCHS" --select last \
  --early-stop-patience 1000 --out "$WORK/all.pt" --name all "${RUN[@]}"
.venv/bin/python scripts/shipped_model/export.py "$WORK/all.pt" "${OUT:-boneage/models/boneage_demo.pt}" \
  --heldout "$WORK/heldout.pt"
