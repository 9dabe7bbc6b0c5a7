#!/usr/bin/env bash
# Issue 27, item 1: which input the hires model should see, by measurement. Each variant of the hires preset
# (input side 224/256/320/384, the hand's aspect kept by padding, CLAHE or no exposure normalisation instead of
# the percentile stretch) gets its own Ray Data cache of rsna-half and the same short fine-tune
# (scripts/hires_model/probe.json: 4 epochs of 1,100, Adam 1e-4) from one raw model trained at 256 px, then is
# scored raw on (a') (b) (c). Every variant starts from a model that already knows the 256 px stretch, so the
# probe favours the control: a variant that still wins is real evidence; one that loses is not proof.
# Re-running skips what is done and resumes an unfinished training from its newest checkpoint.
#   INIT=raw.pt DATA=../shared/data WORK=/work/runs/size SETS_DIR=$WORK/sets bash scripts/hires_model/input_probe.sh
set -euo pipefail
DATA=${DATA:-../shared/data}
WORK=${WORK:-out/input-probe}
SETS_DIR=${SETS_DIR:-$WORK/sets}
INIT=${INIT:?the raw (uncalibrated) 256 px model every variant starts from}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
[ -d "$SETS_DIR/a_half" ] || $PY scripts/hires_model/heldout_sets.py "$DATA" "$SETS_DIR"
$PY - "$WORK" <<'PY'
import json, sys
from dataclasses import asdict, replace
from boneage.prepare.config import PRESETS
variants = {"control": {}, "s224": {"output_size": 224}, "s320": {"output_size": 320},
            "s384": {"output_size": 384}, "pad": {"fit": "pad"},
            "clahe": {"normalise": "none", "clahe": True}, "none": {"normalise": "none"}}
for name, change in variants.items():
    with open(f"{sys.argv[1]}/{name}.json", "w") as f:
        json.dump(asdict(replace(PRESETS["hires"], **change)), f, indent=1)
PY
for v in ${VARIANTS:-control s224 s320 pad clahe none s384}; do
  echo "== $v $(date +%T)"
  [ -f "$WORK/$v/cache-half/summary.json" ] || $BONEAGE preprocess "$DATA/rsna-half/images" \
    --labels "$DATA/rsna-half/labels.csv" --out "$WORK/$v/cache-half" --config "$WORK/$v.json" --no-ray
  if [ ! -f "$WORK/$v.pt" ]; then
    latest=$($PY scripts/shipped_model/latest_checkpoint.py "$WORK/$v/train/probe" || true)
    $BONEAGE train --data "$WORK/$v/cache-half" --val-fraction 0.1 --exclude-ids "$DATA/rsna/train.csv" \
      --config scripts/hires_model/probe.json --init "$INIT" --out "$WORK/$v.pt" --storage "$WORK/$v/train" \
      --name "probe${latest:+-resumed}" ${latest:+--resume "$latest"} --workers 2 --torch-threads 1
  fi
  SKIP_DONE=1 DATA="$DATA" SETS_DIR="$SETS_DIR" BONEAGE="$BONEAGE" \
    bash scripts/hires_model/evaluate_sets.sh "$WORK/$v.pt" "$WORK/eval/$v" "a_half b c"
done
