#!/usr/bin/env bash
# GPU, the bundled DFlash and VP drafters: regenerate one larger data set with the
# bundled target (75% greedy), then train three drafters on it side by side on the one GPU:
#   dflash_a: DFlash, 4 layers, MLP 1024 (the first drafter's shape, 3x its data)
#   dflash_b: DFlash, 5 layers, MLP 512 (deeper, smaller on disk)
#   vp:       D²SD variable-prefix drafter, 5 layers, MLP 512
# Returns each as a split tar, the logs, and the regenerated data (int16, for later runs).
#   usage: OUT=dir TOKENS=.cache_tokens/tokens_sample.bin BUDGET=seconds bash scripts/gpu_drafters_v2.sh
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
W=${WORK:-/tmp/specdiff_work}
mkdir -p "$W" "$OUT"
common=(--target models/target --tokens "$TOKENS" --data "$W/regen.pt" --time-budget "${BUDGET:-300}"
        --steps 100000 --num-sequences "${NSEQ:-20480}" --regen-batch 2048 --prompt-len 128 --response-len 192
        --sampled-frac 0.25)
if [ ! -f "$W/regen.pt" ]; then  # regenerate once: a trainer run with no steps
  python3 -m specdiff train-drafter "${common[@]}" --out "$W/scratch" --steps 0 2>&1 | tail -3 | tee "$OUT/regen.log"
fi
python3 -m specdiff train-drafter "${common[@]}" --out "$W/dflash_a" --layers 4 > "$OUT/dflash_a.log" 2>&1 &
python3 -m specdiff train-drafter "${common[@]}" --out "$W/dflash_b" --layers 5 --intermediate-size 512 > "$OUT/dflash_b.log" 2>&1 &
python3 -m specdiff train-drafter "${common[@]}" --out "$W/vp" --layers 5 --intermediate-size 512 --objective vp > "$OUT/vp.log" 2>&1 &
wait
for m in dflash_a dflash_b vp; do tail -1 "$OUT/$m.log"; done
tar -C "$W" -cf - --exclude trainer_state.pt dflash_a dflash_b vp | split -b 15M - "$OUT/drafters.tar.part-"
cp "$W/regen.pt" "$OUT/regen.pt"
ls -la "$OUT"
