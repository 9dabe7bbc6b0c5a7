#!/usr/bin/env bash
# Reproduces the high-resolution model (preset hires, 256 px) with the project's own jobs:
#   1. the Ray Data cache of the 1,196 rsna-half films (boneage preprocess --config hires);
#   2. Ray Train DDP, fine-tuning the 100 px model (boneage/models/boneage_rsna100.pt) at 256 px
#      (progressive resizing), 10% of the ids held out by hash; resumes from its last epoch
#      checkpoint when run again (checkpoints under $WORK/train, outside the repository);
#   2b. that model trained on, with the 12,611 rsna-100px films (through the same preset) mixed
#      half and half into each epoch and resolution augmentation (scripts/hires_model/mix.json);
#   3. held-out figures: (a) the same 10% split of rsna-100px, (a') those ids' rsna-half films,
#      (b) the 150 full-size rsna/val films, (c) the 52 full-size rsna/train films;
#   4. calibration on the full-size rsna/val films (the age-band interval and the recalibration of
#      the point estimate), measured on (c), which calibration never saw;
#   5. the fp16 export.
#   DATA=../shared/data WORK=/work/runs bash scripts/train_hires_model.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/hires-model}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
PY=${PY:-.venv/bin/python}
NAME=${NAME:-finetune}
TRAIN_ARGS=(${TRAIN_ARGS:---workers 2 --torch-threads 1})
mkdir -p "$WORK"

# 1. the cache (Ray Data)
[ -f "$WORK/cache-half/summary.json" ] || $BONEAGE preprocess "$DATA/rsna-half/images" \
  --labels "$DATA/rsna-half/labels.csv" --out "$WORK/cache-half" --config hires

# 2. train (Ray Train), resuming from the newest epoch checkpoint of an earlier run
if [ ! -f "$WORK/$NAME.pt" ]; then
  latest=$($PY scripts/shipped_model/latest_checkpoint.py "$WORK/train/$NAME" || true)
  $BONEAGE train --data "$WORK/cache-half" --val-fraction 0.1 --exclude-ids "$DATA/rsna/train.csv" \
    --config scripts/hires_model/finetune.json --init boneage/models/boneage_rsna100.pt \
    --out "$WORK/$NAME.pt" --storage "$WORK/train" --name "$NAME${latest:+-resumed}" \
    ${latest:+--resume "$latest"} "${TRAIN_ARGS[@]}"
fi

# 2b. mixed with rsna-100px (its cache through the same preset), resolution augmentation
[ -f "$WORK/cache-100/summary.json" ] || $BONEAGE preprocess "$DATA/rsna-100px/images" \
  --labels "$DATA/rsna-100px/boneage-training-dataset.csv" --out "$WORK/cache-100" --config hires
if [ ! -f "$WORK/$NAME-mix.pt" ]; then
  latest=$($PY scripts/shipped_model/latest_checkpoint.py "$WORK/train/$NAME-mix" || true)
  $BONEAGE train --data "$WORK/cache-half" --mix "$WORK/cache-100" --val-fraction 0.1 \
    --exclude-ids "$DATA/rsna/train.csv" --config scripts/hires_model/mix.json --init "$WORK/$NAME.pt" \
    --out "$WORK/$NAME-mix.pt" --storage "$WORK/train" --name "$NAME-mix${latest:+-resumed}" \
    ${latest:+--resume "$latest"} "${TRAIN_ARGS[@]}"
fi
NAME=$NAME-mix

# 3. the held-out sets as folders of films with labels (the 10% id-hash split of rsna-100px and rsna-half)
$PY scripts/hires_model/heldout_sets.py "$DATA" "$WORK/sets"
evaluate() {  # model, output folder
  DATA="$DATA" SETS_DIR="$WORK/sets" BONEAGE="$BONEAGE" bash scripts/hires_model/evaluate_sets.sh "$1" "$2" "a a_half b c"
}
evaluate "$WORK/$NAME.pt" "$WORK/eval/$NAME"

# 4. calibration on rsna/val (a cache made with the model's preset); (c) measures it
[ -f "$WORK/cache-rsna-val/summary.json" ] || $BONEAGE preprocess "$DATA/rsna/val" --labels "$DATA/rsna/val.csv" \
  --out "$WORK/cache-rsna-val" --config hires --no-ray
$BONEAGE calibrate --model "$WORK/$NAME.pt" --data "$WORK/cache-rsna-val" --out "$WORK/$NAME-cal.pt" --tta 0 \
  --recalibrate inverse
evaluate "$WORK/$NAME-cal.pt" "$WORK/eval/$NAME-cal"

# 5. fp16, with the held-out figures in its metadata
$PY scripts/shipped_model/export.py "$WORK/$NAME-cal.pt" "${OUT:-boneage/models/boneage_hires.pt}" \
  --eval "$WORK/eval/$NAME-cal" --note "Fine-tuned at 256 px (preset hires) from the 100 px model (itself trained \
on the 12,611 RSNA training images at 100 px, rsna-100px): first on 1,084 rsna-half films (RSNA training films at \
half their original resolution), then on those and the rsna-100px films through the same preset, mixed half and \
half, with resolution augmentation; 10% of the ids held out by hash, none of rsna/val or rsna/train; on 2 CPU \
cores. Interval (per band of bone age) and recalibration fitted on the 150 full-size rsna/val films. For research \
use only: not for clinical decisions. A model trained on the full-size RSNA set on GPUs should do better."
