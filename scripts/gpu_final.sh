#!/usr/bin/env bash
# On the GPU, one call: graph-engine cost profiles (bf16, fp32); the fp32 bench of
# every AR-drafter method and budget (T=0/1, both prompt sets; fp32 so that outputs can be
# compared token for token); D²SD beside dflash/ddtree at equal nodes; the same methods through
# plain eager Hugging Face calls; the bf16 bench at T=0. Packed into $OUT/bench.tar after each step.
#   usage: OUT=dir LIMIT=prompts-per-set bash scripts/gpu_final.sh
set -uo pipefail
source scripts/bench_env.sh
{
for dt in float32 bfloat16; do
  echo "--- profile $dt ($((SECONDS - t0)) s)"
  sd profile --device cuda --dtype $dt --engine graph --contexts 128,512,1024 --reps 10
done
echo "--- graph float32, all budgets ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype float32 --engine graph $P --methods ar,dflash,ddtree,caddtree \
  --budgets 16,32,64,128,256,512 --temperature 0,1 --limit "$L" --out "$R/gpu_graph_float32"
echo "--- graph float32, d2sd ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype float32 --engine graph $P --methods ar,dflash,ddtree,d2sd,d2sd-hybrid \
  --budgets 64 --temperature 0,1 --limit "$L" --out "$R/gpu_d2sd_float32"
echo "--- eager hf float32 ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype float32 --engine hf --prompts data/prompts/function_completion.jsonl \
  --methods ar,dflash,ddtree --budgets 64 --temperature 0 --limit 6 --warmup 1 --out "$R/gpu_eager_hf_float32"
echo "--- graph bfloat16 T=0 ($((SECONDS - t0)) s)"
sd bench --device cuda --dtype bfloat16 --engine graph $P --methods ar,dflash,ddtree,caddtree \
  --budgets 16,32,64,128,256,512 --temperature 0 --limit 24 --out "$R/gpu_graph_bfloat16"
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | tee "$R/gpu_final.log"
tar -C "$R" -cf "$OUT/bench.tar" .
