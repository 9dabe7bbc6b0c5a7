#!/usr/bin/env bash
# Scores one model on held-out sets named as in the issue, each with `boneage evaluate` into OUT/<set>:
#   a, a_half: the 10% id-hash split of rsna-100px and those ids' rsna-half films (heldout_sets.py, in SETS_DIR);
#   b: the 150 full-size rsna/val films; c: the 52 full-size rsna/train films.
# SKIP_DONE=1 leaves a set whose metrics.json exists alone, so a resumed probe does not score it twice.
#   SETS_DIR=out/sets bash scripts/hires_model/evaluate_sets.sh MODEL OUT "a a_half b c"
set -euo pipefail
MODEL=$1; OUT=$2; SETS=$3
DATA=${DATA:-../shared/data}
BONEAGE=${BONEAGE:-.venv/bin/boneage}
for s in $SETS; do
  case $s in
    a|a_half) dir=${SETS_DIR:?the folder of heldout_sets.py}/$s/images; labels=$SETS_DIR/$s/labels.csv ;;
    b) dir=$DATA/rsna/val; labels=$DATA/rsna/val.csv ;;
    c) dir=$DATA/rsna/train; labels=$DATA/rsna/train.csv ;;
    *) echo "unknown held-out set '$s' (a, a_half, b or c)" >&2; exit 2 ;;
  esac
  if [ "${SKIP_DONE:-0}" = 1 ] && [ -f "$OUT/$s/metrics.json" ]; then continue; fi
  $BONEAGE evaluate --model "$MODEL" --data "$dir" --labels "$labels" --out "$OUT/$s"
done
