#!/usr/bin/env bash
# Issue 4 on the GPU after the span-bucket, prepare and bucketed-caddtree changes: graph-engine
# cost profiles, then the bench of every AR-drafter method and budget (T=0/1, both prompt sets),
# bf16 first (what users run), then fp32 (token-for-token comparable with AR). Packed into
# $OUT/bench.tar after each step.
#   usage: OUT=dir LIMIT=prompts-per-set bash runs/gpu_issue4.sh
set -uo pipefail
source runs/bench_env.sh
{
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
for dt in bfloat16 float32; do
  echo "--- profile $dt ($((SECONDS - t0)) s)"
  sd profile --device cuda --dtype $dt --engine graph --contexts 128,512,1024 --reps 10
  echo "--- graph $dt, all budgets ($((SECONDS - t0)) s)"
  sd bench --device cuda --dtype $dt --engine graph $P --methods ar,dflash,ddtree,caddtree \
    --budgets 16,32,64,128,256,512 --temperature 0,1 --limit "$L" --out "$R/gpu_graph_$dt"
done
echo "--- done ($((SECONDS - t0)) s)"
} 2>&1 | grep -v "it/s]" | tee "$R/gpu_issue4.log"
tar -C "$R" -cf "$OUT/bench.tar" .
