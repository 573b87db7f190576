#!/usr/bin/env bash
# On the GPU: train specdiff's own masked-diffusion LM for BUDGET seconds, calibrate
# Spiffy's draft graphs (D = 3, 5, 8, 10; one-token-per-step and threshold rules, side by side),
# then bench baseline vs Spiffy (fp32, exactness checked per prompt). Everything so far is packed
# into $OUT after each step, so a cut-off run returns the finished steps:
#   $OUT/dllm.tar.part-*   the model folder, graphs/ included (split at 15M: cat | tar -x)
#   $OUT/results.tar       train log, model card, graph JSONs, bench results.json + results.md
#   $OUT/gpu_dllm.log      this script's output
# Data: the carried 4M-token sample (TOKENS, as scripts/gpu_drafters_v2.sh uses it), else the corpus
# built as scripts/gpu_target.sh does. About 8 minutes on one H100 with BUDGET=300.
#   usage: OUT=dir TOKENS=.cache_tokens/tokens_sample.bin BUDGET=300 bash scripts/gpu_dllm.sh [train-dllm flags]
#   CPU dry run: DEVICE=cpu COMPILE=--no-compile BUDGET=20 NUM_PROMPTS=2 CALIB_PROMPTS=2 \
#     DECODE="--gen-length 32" OUT=/tmp/o bash scripts/gpu_dllm.sh --hidden 64 --layers 2 ...
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
W=${WORK:-/tmp/specdiff_dllm}
R=$W/results
rm -rf "$W/dllm" "$R"
mkdir -p "$W" "$R" "$OUT"
TOKENS=${TOKENS:-.cache_tokens/tokens_sample.bin}
DEV=${DEVICE:-cuda}
read -r -a DEC <<< "${DECODE:-}"
pack_model() { rm -f "$OUT"/dllm.tar.part-*; tar -C "$W" -cf - dllm | split -b 15M - "$OUT/dllm.tar.part-"; }
pack() { tar -C "$R" -cf "$OUT/results.tar" .; }
t0=$SECONDS
{
if [ -f "$TOKENS" ]; then
  DATA=(--tokens "$TOKENS")
else
  echo "--- corpus ($((SECONDS - t0)) s): no $TOKENS"
  python3 -m specdiff corpus --out "$W/corpus" --prompts-out "$W/prompts" \
    --heldout-paths data/prompts/heldout_paths.txt --num-prompts 0 ${CORPUS_SRC:-}
  DATA=(--corpus "$W/corpus" --tokens "$W/tokens")
fi
echo "--- train ($((SECONDS - t0)) s)"
python3 -m specdiff train-dllm "${DATA[@]}" --out "$W/dllm" --time-budget "${BUDGET:-300}" \
  --device "$DEV" ${COMPILE:---compile} "$@" || exit 1
cp "$W/dllm/train_log.jsonl" "$W/dllm/specdiff_dllm.json" "$W/dllm/README.md" "$R/"
pack_model; pack
echo "--- calibrate ($((SECONDS - t0)) s)"
for rule in low_confidence threshold; do  # the two rules side by side: the GPU is far from busy
  python3 -m specdiff.cli dllm calibrate --model "$W/dllm" --device "$DEV" --remasking $rule \
    --num-prompts "${CALIB_PROMPTS:-16}" --budgets 3,5,8,10 --out "$W/dllm/graphs" "${DEC[@]}" &
done
wait
cp -r "$W/dllm/graphs" "$R/"
pack_model; pack
echo "--- bench ($((SECONDS - t0)) s)"
python3 -m specdiff dllm bench --model "$W/dllm" --device "$DEV" --num-prompts "${NUM_PROMPTS:-16}" \
  --out "$R/bench" "${DEC[@]}"
echo "bench exit status $? (1: some Spiffy output differed from the baseline)"
pack
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep --line-buffered -v "it/s]" | tee "$OUT/gpu_dllm.log"
pack
