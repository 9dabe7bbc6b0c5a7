#!/usr/bin/env bash
# Reproduces boneage/models/boneage_demo.pt, the demonstration model shipped in the package, with the
# project's own commands: the Ray Data cache, then Ray Train (one CPU worker per run), first on 80% of the 202 labelled shared images to measure it on the 20% it never saw
# (split by id hash); that model ships (see step 2 for why not a retrain on everything). 128 px instead of the recipe's 384 (and ResNet-34 from random weights: no ImageNet
# weights here) so that it trains on a 2-core CPU in about 20 minutes.
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/shipped-model}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
CONFIG=${CONFIG:-scripts/shipped_model/train_config.json}
RUN=(--workers 1 --cpus-per-worker 1 --torch-threads 2 --storage "$WORK/runs")
mkdir -p "$WORK"
(cat "$DATA/rsna/train.csv"; tail -n +2 "$DATA/rsna/val.csv") > "$WORK/labels.csv"
$BONEAGE preprocess "$DATA/rsna/train" "$DATA/rsna/val" --labels "$WORK/labels.csv" --out "$WORK/cache" \
  --output-size 128
# 1. held out: 20% of the images by id hash, the best epoch by validation MAE
$BONEAGE train --data "$WORK/cache" --val-fraction 0.2 --config "$CONFIG" --out "$WORK/heldout.pt" \
  --name heldout "${RUN[@]}"
$BONEAGE evaluate --model "$WORK/heldout.pt" --data "$WORK/cache" --val-fraction 0.2 --out "$WORK/heldout-eval"
$BONEAGE calibrate --model "$WORK/heldout.pt" --data "$WORK/cache" --val-fraction 0.2 --tta 0 \
  --out "$WORK/heldout-cal.pt"
# 2. what ships: the held-out run's model itself, with its calibration. A retrain on all 177 images
# with the same schedule (6 epochs at 1e-3; RETRAIN=1 runs it) fitted its own training images with an
# MAE of 43 months at the end (38.6 at best): on this little data the runs are too unstable for the
# usual "retrain on everything" to be the better model, so it is not the one shipped.
if [ "${RETRAIN:-0}" = 1 ]; then
  EPOCHS=$(.venv/bin/python -c "import sys; from boneage.checkpoint import load_checkpoint; print(load_checkpoint(sys.argv[1]).metadata['epoch'] + 1)" "$WORK/heldout.pt")
  $BONEAGE train --data "$WORK/cache" --val "$WORK/cache" --config "$CONFIG" --epochs "$EPOCHS" --select last \
    --plateau-patience 1000 --early-stop-patience 1000 --out "$WORK/all.pt" --name all "${RUN[@]}"
fi
.venv/bin/python scripts/shipped_model/export.py "$WORK/heldout.pt" "${OUT:-boneage/models/boneage_demo.pt}" \
  --heldout "$WORK/heldout.pt" --calibrated "$WORK/heldout-cal.pt"
