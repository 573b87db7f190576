#!/usr/bin/env bash
# GPU, step 2 of the bundled pair: regenerate data with the trained target, train the DFlash drafter, then
# measure held-out tau. Needs models/target (unpacked from step 1) and tokens_sample.bin.
#   usage: OUT=dir TOKENS=tokens_sample.bin BUDGET=seconds bash scripts/gpu_drafter.sh [extra flags]
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
W=${WORK:-/tmp/specdiff_work}
mkdir -p "$W" "$OUT"
python3 -m specdiff train-drafter --target "${TARGET:-models/target}" --tokens "$TOKENS" \
  --data "$W/regen.pt" --out "$W/dflash" --time-budget "${BUDGET:-300}" "$@" 2>&1 | tee "$OUT/drafter_train.log"
tar -C "$W" -cf - --exclude trainer_state.pt dflash | split -b 15M - "$OUT/dflash.tar.part-"
