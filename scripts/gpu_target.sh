#!/usr/bin/env bash
# GPU, step 1 of the bundled pair: build the corpus from this machine's stdlib + site-packages (holding out
# every path that is held out where the prompt sets were made), then pretrain the target.
# Output under $OUT: the target folder as a split tar (files come back at most 16 MiB each), a
# 4M-token sample of the training tokens (prompts for the drafter's regenerated data), the log.
#   usage: OUT=dir BUDGET=seconds bash scripts/gpu_target.sh [extra pretrain flags]
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
W=${WORK:-/tmp/specdiff_work}
mkdir -p "$W" "$OUT"
python3 -m specdiff corpus --out "$W/corpus" --prompts-out "$W/prompts" \
  --heldout-paths data/prompts/heldout_paths.txt --num-prompts 0 ${CORPUS_SRC:-}
python3 -m specdiff pretrain --corpus "$W/corpus" --tokenizer data/tokenizer --out "$W/target" \
  --tokens "$W/tokens" --time-budget "${BUDGET:-330}" --steps 1000000 --compile --log-every 250 \
  --eval-every 2000 --no-save-optimizer "$@"
python3 - "$W" "$OUT" <<'PY'
import sys, numpy as np
w, out = sys.argv[1:]
t = np.memmap(f"{w}/tokens/train.bin", dtype=np.uint16, mode="r")
rng = np.random.default_rng(0)
starts = np.sort(rng.integers(0, len(t) - 4096, 1024))
np.concatenate([t[s:s + 4096] for s in starts]).tofile(f"{out}/tokens_sample.bin")
PY
cp "$W/corpus/stats.json" "$OUT/corpus_stats.json"
tar -C "$W" -cf - target | split -b 15M - "$OUT/target.tar.part-"
